package backup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/schedule"
)

// recompressQueue is what a plan's window has left to recompress.
type recompressQueue struct {
	target string   // codec
	points []string // made in the window
	timer  schedule.Timer
}

// queueRecompress arranges for the chunks that points added to be rewritten
// with p.Compression.RecompressTo: when p's window closes, or now (within
// the run) if p has none. It returns the report of a recompression made
// now, nil otherwise.
func (s *Service) queueRecompress(ctx context.Context, p plan.Plan, points []string) *repository.RecompressReport {
	target := p.Compression.RecompressTo
	if target == "" || len(points) == 0 {
		return nil
	}
	now := s.now()
	var end time.Time
	var inWindow bool
	if p.Window != nil {
		end, inWindow = p.Window.CloseAfter(now)
	}
	if !inWindow {
		rep, err := s.recompress(ctx, target, points)
		if err != nil {
			s.log.Warn("recompress", "plan", p.ID, "err", err)
		}
		return rep
	}
	s.schedMu.Lock()
	defer s.schedMu.Unlock()
	q := s.recompressQ[p.ID]
	if q == nil {
		q = &recompressQueue{}
		s.recompressQ[p.ID] = q
		q.timer = s.cfg.Clock.AfterFunc(end.Sub(now), func() { s.windowClosed(p.ID) })
	}
	q.target = target
	q.points = append(q.points, points...)
	return nil
}

// windowClosed starts the recompression of what plan id's window queued.
// It runs on the Clock's timer (inside FakeClock.Advance in tests), so the
// work goes to its own goroutine, counted for WaitIdle.
func (s *Service) windowClosed(id string) {
	s.schedMu.Lock()
	q := s.recompressQ[id]
	delete(s.recompressQ, id)
	if q == nil || s.stopping {
		s.schedMu.Unlock()
		return
	}
	s.active++
	s.recompressing++
	s.schedMu.Unlock()
	go func() {
		defer func() {
			s.schedMu.Lock()
			s.active--
			s.recompressing--
			s.idle.Broadcast()
			s.schedMu.Unlock()
		}()
		job := s.newJob(KindRecompress, id, false)
		job.Started, job.State = s.now(), JobRunning
		job.run = &planRun{}
		s.record(job)
		rep, err := s.recompress(context.Background(), q.target, q.points)
		job.run.recompress, job.Err, job.Finished = rep, err, s.now()
		job.State = JobSucceeded
		if err != nil {
			job.State = JobFailed
			s.log.Warn("recompress after the window", "plan", id, "err", err)
		}
		s.record(job)
	}()
}

// recompress rewrites with target the chunks that points added to their
// VMs' points from before them. Points already deleted (by retention) are
// left out.
func (s *Service) recompress(ctx context.Context, target string, points []string) (*repository.RecompressReport, error) {
	var keep []*repository.Manifest
	for _, id := range points {
		m, err := s.repo.Point(ctx, id)
		if errors.Is(err, repository.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		keep = append(keep, m)
	}
	if len(keep) == 0 {
		return &repository.RecompressReport{}, nil
	}
	// Per VM, the newest point before the oldest one to recompress: its
	// chunks were stored before the window.
	var ids, exclude []string
	oldest := map[string]*repository.Manifest{}
	for _, m := range keep {
		ids = append(ids, m.ID)
		if o := oldest[m.VMID]; o == nil || m.Created.Before(o.Created) {
			oldest[m.VMID] = m
		}
	}
	for vm, first := range oldest {
		ms, err := s.repo.ListPoints(ctx, repository.Filter{VMID: vm})
		if err != nil {
			return nil, err
		}
		if i := slices.IndexFunc(ms, func(m *repository.Manifest) bool { return m.Created.Before(first.Created) }); i >= 0 {
			exclude = append(exclude, ms[i].ID) // newest first
		}
	}
	rep, err := s.repo.Recompress(ctx, &repository.RecompressOptions{Codec: target, Points: ids, Exclude: exclude})
	if err != nil {
		return rep, err
	}
	s.log.Info("recompressed", "codec", target, "points", len(ids), "chunks", rep.Chunks, "rewritten", rep.Rewritten,
		"bytes_before", rep.BytesBefore, "bytes_after", rep.BytesAfter)
	return rep, nil
}

// Recompress rewrites every chunk of plan id's restore points that is
// stored with another compressing codec than the plan's RecompressTo (or,
// if unset, its codec): for points whose window's recompression did not
// happen (the Service was closed first). It reads the first byte of every
// chunk of the plan's points.
func (s *Service) Recompress(ctx context.Context, id string, dryRun bool) (*repository.RecompressReport, error) {
	p, err := s.Plan(ctx, id)
	if err != nil {
		return nil, err
	}
	target := p.Compression.RecompressTo
	if target == "" {
		target = p.Compression.CodecName()
	}
	ms, err := s.repo.ListPoints(ctx, repository.Filter{PlanID: id})
	if err != nil {
		return nil, fmt.Errorf("backup: recompress plan %q: %w", id, err)
	}
	ids := make([]string, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	rep, err := s.repo.Recompress(ctx, &repository.RecompressOptions{Codec: target, Points: ids, DryRun: dryRun})
	if err != nil {
		return rep, fmt.Errorf("backup: recompress plan %q: %w", id, err)
	}
	return rep, nil
}
