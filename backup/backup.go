package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-multierror"
	"golang.org/x/sync/errgroup"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/pipeline"
	"github.com/vmbackup/vmbackup/repository"
)

// ManifestVersion is the Manifest.Version the Service writes.
const ManifestVersion = 1

// Request asks for a backup.
type Request struct {
	// VMIDs are the VMs to back up, in this order (at most
	// Config.ParallelVMs at once). Duplicates are ignored.
	VMIDs []string
	// PlanID is recorded in the restore points and the job.
	PlanID string
	// Manual marks the points as made by hand (retention may keep them).
	Manual bool
	// ForceFull reads every disk whole even where an incremental is
	// possible (reason "forced full").
	ForceFull bool
	// Consistency asked for; the zero value means crash consistency.
	Consistency hypervisor.Consistency
	// AllowCrashFallback takes a crash-consistent snapshot when the guest
	// cannot be quiesced, and records why, instead of failing the VM.
	AllowCrashFallback bool
	// Codec stores the job's new chunks with this codec (compress.Names)
	// instead of the repository's; "" keeps the repository's.
	Codec string
	// Limits, if set, replace the Service's ParallelVMs, Retries and
	// RetryDelay for this job (a plan's limits).
	Limits *Limits
}

// Limits bound one job. Zero ParallelVMs and RetryDelay mean the Service's;
// Retries is taken as it is (0: no retry).
type Limits struct {
	ParallelVMs int
	Retries     int
	RetryDelay  time.Duration
}

// Backup backs up the requested VMs, one restore point per VM, and returns
// the finished job. The error is nil if every VM succeeded; otherwise it
// aggregates the VMs' errors (a *multierror.Error) and Job.State says
// whether the job partially failed, failed or was cancelled. A request
// without VMs is an error and runs no job.
func (s *Service) Backup(ctx context.Context, req Request) (*Job, error) {
	if len(req.VMIDs) == 0 {
		return nil, errors.New("backup: request: VMIDs is empty")
	}
	var ids []string
	seen := map[string]bool{}
	for _, id := range req.VMIDs {
		if id == "" {
			return nil, errors.New("backup: request: VMIDs holds an empty id")
		}
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	lim, err := s.jobLimits(req)
	if err != nil {
		return nil, err
	}
	return s.backupJob(ctx, s.newJob(KindBackup, req.PlanID, req.Manual), req, ids, lim)
}

// jobLimits checks req's codec and limits and returns the job's limits.
func (s *Service) jobLimits(req Request) (Limits, error) {
	if req.Codec != "" {
		if _, err := compress.Lookup(req.Codec); err != nil {
			return Limits{}, fmt.Errorf("backup: request: Codec %q: %w", req.Codec, err)
		}
	}
	lim := Limits{ParallelVMs: s.cfg.ParallelVMs, Retries: s.cfg.Retries, RetryDelay: s.cfg.RetryDelay}
	if l := req.Limits; l != nil {
		if l.ParallelVMs < 0 || l.Retries < 0 || l.RetryDelay < 0 {
			return Limits{}, fmt.Errorf("backup: request: Limits %+v: negative value", *l)
		}
		lim.Retries = l.Retries
		if l.ParallelVMs > 0 {
			lim.ParallelVMs = l.ParallelVMs
		}
		if l.RetryDelay > 0 {
			lim.RetryDelay = l.RetryDelay
		}
	}
	return lim, nil
}

// newJob returns a job of kind with a new id, not yet started.
func (s *Service) newJob(kind JobKind, planID string, manual bool) *Job {
	now := s.now()
	return &Job{ID: newJobID(now), Kind: kind, PlanID: planID, Manual: manual, State: JobPending, created: now, seq: s.jobSeq.Add(1), beat: &heartbeat{}}
}

// backupJob runs job as the backup of the VMs ids.
func (s *Service) backupJob(ctx context.Context, job *Job, req Request, ids []string, lim Limits) (*Job, error) {
	return s.runJob(ctx, job, ids, lim, func(ctx context.Context, r *VMResult, progress func(disk string, done, total int64)) error {
		return s.backupVM(ctx, job, req, r, progress)
	})
}

// runJob runs fn for every VM id, lim.ParallelVMs at once, with retries,
// once the job has one of the Service's slots for its kind; it emits the
// job's events and keeps its record in the history.
func (s *Service) runJob(ctx context.Context, job *Job, vmIDs []string, lim Limits, fn func(context.Context, *VMResult, func(string, int64, int64)) error) (*Job, error) {
	job.VMs = make([]VMResult, len(vmIDs))
	for i, id := range vmIDs {
		job.VMs[i] = VMResult{VMID: id, State: VMPending}
	}
	job.State = JobPending
	s.record(job)
	slots := s.backupSlots
	if job.Kind != KindBackup {
		slots = s.restoreSlots
	}
	slotErr := slots.Acquire(ctx, 1)
	if slotErr == nil {
		defer slots.Release(1)
	}
	job.State = JobRunning
	job.Started = s.now()
	log := s.log.With("job", job.ID, "kind", job.Kind)
	log.Info("job started", "vms", len(vmIDs), "plan", job.PlanID)
	s.record(job)
	s.emit(Event{Type: EventJobStarted, JobID: job.ID, JobKind: job.Kind, Job: &Job{ID: job.ID, Kind: job.Kind, PlanID: job.PlanID, Manual: job.Manual, State: JobRunning, Started: job.Started}})

	var g errgroup.Group
	g.SetLimit(lim.ParallelVMs)
	for i := range job.VMs {
		r := &job.VMs[i]
		if ctx.Err() != nil {
			r.State, r.Err = VMCancelled, fmt.Errorf("vm %q: %w", r.VMID, ctx.Err())
			continue
		}
		g.Go(func() error {
			s.runVM(ctx, job, r, lim, log, fn)
			return nil
		})
	}
	g.Wait()

	var merr *multierror.Error
	ok := 0
	for i := range job.VMs {
		r := &job.VMs[i]
		if r.Err != nil {
			merr = multierror.Append(merr, r.Err)
		}
		if r.State == VMSucceeded {
			ok++
		}
	}
	switch {
	case ctx.Err() != nil && ok < len(job.VMs):
		job.State = JobCancelled
	case ok == len(job.VMs):
		job.State = JobSucceeded
	case ok == 0:
		job.State = JobFailed
	default:
		job.State = JobPartiallyFailed
	}
	job.Err = merr.ErrorOrNil()
	job.Finished = s.now()
	level := slog.LevelInfo
	if job.State != JobSucceeded {
		level = slog.LevelError
	}
	log.Log(ctx, level, "job finished", "state", job.State, "duration", job.Finished.Sub(job.Started), "err", job.Err)
	s.record(job)
	final := *job
	s.emit(Event{Type: EventJobFinished, JobID: job.ID, JobKind: job.Kind, Job: &final})
	return job, job.Err
}

// runVM runs fn for one VM with retries and fills r.
func (s *Service) runVM(ctx context.Context, job *Job, r *VMResult, lim Limits, log *slog.Logger, fn func(context.Context, *VMResult, func(string, int64, int64)) error) {
	log = log.With("vm", r.VMID)
	r.State = VMRunning
	r.Started = s.now()
	start := time.Now()
	s.emit(Event{Type: EventVMStarted, JobID: job.ID, JobKind: job.Kind, VMID: r.VMID})
	log.Info("vm started")
	progress := func(disk string, done, total int64) {
		s.emit(Event{Type: EventProgress, JobID: job.ID, JobKind: job.Kind, VMID: r.VMID, VMName: r.VMName, Disk: disk, BytesDone: done, BytesTotal: total})
	}
	for {
		err := fn(ctx, r, progress)
		if err == nil {
			r.State, r.Err = VMSucceeded, nil
			break
		}
		if ctx.Err() != nil {
			r.State, r.Err = VMCancelled, fmt.Errorf("vm %q: %w", r.VMID, errors.Join(ctx.Err(), err))
			break
		}
		r.State, r.Err = VMFailed, fmt.Errorf("vm %q: %w", r.VMID, err)
		if r.Retries >= lim.Retries || !retryable(err) {
			break
		}
		r.Retries++
		log.Warn("vm failed, retrying", "err", err, "retry", r.Retries, "of", lim.Retries, "delay", lim.RetryDelay)
		t := time.NewTimer(lim.RetryDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
		if ctx.Err() != nil {
			r.State, r.Err = VMCancelled, fmt.Errorf("vm %q: %w", r.VMID, errors.Join(ctx.Err(), err))
			break
		}
	}
	r.Duration = time.Since(start)
	level := slog.LevelInfo
	if r.State != VMSucceeded {
		level = slog.LevelError
	}
	log.Log(ctx, level, "vm finished", "state", r.State, "point", r.PointID, "kind", r.Kind, "reason", r.Reason,
		"read", r.BytesRead, "new", r.BytesNew, "stored", r.BytesStored, "written", r.BytesWritten, "duration", r.Duration, "retries", r.Retries, "err", r.Err)
	final := *r
	s.emit(Event{Type: EventVMFinished, JobID: job.ID, JobKind: job.Kind, VMID: r.VMID, VMName: r.VMName, VM: &final})
}

// retryable reports whether trying again may help: not for unknown VMs,
// unsupported requests or corrupt data.
func retryable(err error) bool {
	return !errors.Is(err, errNoRetry) && !errors.Is(err, hypervisor.ErrNotFound) && !errors.Is(err, hypervisor.ErrUnsupported) &&
		!errors.Is(err, repository.ErrCorrupt) && !errors.Is(err, repository.ErrNotFound)
}

// backupVM makes one restore point of one VM and fills r.
func (s *Service) backupVM(ctx context.Context, job *Job, req Request, r *VMResult, progress func(string, int64, int64)) (err error) {
	r.BytesRead, r.BytesNew, r.BytesStored, r.BytesTotal = 0, 0, 0, 0
	r.Kind, r.Reason, r.PointID = "", "", ""

	snap, err := s.hv.Snapshot(ctx, r.VMID, hypervisor.SnapshotOptions{
		Consistency:        req.Consistency,
		AllowCrashFallback: req.AllowCrashFallback,
		Name:               "vmbackup " + job.ID,
	})
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() {
		if rerr := snap.Release(context.WithoutCancel(ctx)); rerr != nil {
			s.log.Error("release snapshot", "job", job.ID, "vm", r.VMID, "snapshot", snap.Info().ID, "err", rerr)
			r.Warnings = append(r.Warnings, fmt.Sprintf("release snapshot %s: %v", snap.Info().ID, rerr))
		}
	}()
	info := snap.Info()
	r.VMName = info.VM.Name
	r.Consistency, r.Note = info.Consistency, info.Note
	if r.Consistency == "" {
		r.Consistency = hypervisor.CrashConsistent
	}

	points, err := s.repo.ListPoints(ctx, repository.Filter{VMID: r.VMID})
	if err != nil {
		return fmt.Errorf("list restore points: %w", err)
	}
	var prev *repository.Manifest
	if len(points) > 0 {
		prev = points[0]
	}
	pw, err := s.repo.NewPointWriter(ctx, prev)
	if err != nil {
		return fmt.Errorf("start restore point: %w", err)
	}
	if req.Codec != "" {
		if err := pw.SetCodec(req.Codec); err != nil {
			pw.Abort(context.WithoutCancel(ctx))
			return err
		}
	}
	committed := false
	defer func() {
		if !committed {
			if aerr := pw.Abort(context.WithoutCancel(ctx)); aerr != nil {
				s.log.Warn("abort restore point", "job", job.ID, "vm", r.VMID, "err", aerr)
			}
		}
	}()

	vmJSON, err := json.Marshal(info.VM)
	if err != nil {
		return fmt.Errorf("encode vm configuration: %w", err)
	}
	m := &repository.Manifest{
		Version:     ManifestVersion,
		VMID:        r.VMID,
		VMName:      info.VM.Name,
		VM:          vmJSON,
		PlanID:      req.PlanID,
		Created:     s.now(),
		Consistency: string(r.Consistency),
		Note:        info.Note,
		Manual:      req.Manual,
	}
	for _, d := range info.VM.Disks {
		r.BytesTotal += d.Size
	}
	indexes := make(map[string]*repository.Index, len(info.VM.Disks))
	var reasons []string
	full := false
	for _, d := range info.VM.Disks {
		dr, err := s.backupDisk(ctx, snap, d, prev, pw, req.ForceFull, progress)
		if err != nil {
			return fmt.Errorf("disk %q: %w", d.ID, err)
		}
		r.BytesRead += dr.rec.Stats.BytesRead
		r.BytesNew += dr.rec.Stats.BytesNew
		r.BytesStored += dr.rec.Stats.BytesStored
		m.Disks = append(m.Disks, dr.rec)
		indexes[d.ID] = dr.index
		full = full || dr.kind == PointFull
		reasons = append(reasons, d.ID+": "+dr.reason)
		s.log.Debug("disk backed up", "job", job.ID, "vm", r.VMID, "disk", d.ID, "kind", dr.kind, "reason", dr.reason,
			"read", dr.rec.Stats.BytesRead, "new", dr.rec.Stats.BytesNew, "stored", dr.rec.Stats.BytesStored)
	}
	m.Kind = PointIncremental
	if full {
		m.Kind = PointFull
	}
	m.Reason = joinReasons(reasons)
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := pw.Commit(ctx, m, indexes); err != nil {
		return fmt.Errorf("commit restore point: %w", err)
	}
	committed = true
	r.PointID, r.Kind, r.Reason = m.ID, m.Kind, m.Reason
	return nil
}

// joinReasons says "first backup" when every disk has that reason, else
// lists "disk: reason" per disk.
func joinReasons(rs []string) string {
	if len(rs) == 0 {
		return "no disks"
	}
	common := ""
	for i, r := range rs {
		_, why, _ := strings.Cut(r, ": ")
		if i == 0 {
			common = why
		} else if why != common {
			return strings.Join(rs, "; ")
		}
	}
	return common
}

type diskResult struct {
	rec    repository.DiskRecord
	index  *repository.Index
	kind   string
	reason string
}

// backupDisk backs up one disk of the snapshot into pw.
func (s *Service) backupDisk(ctx context.Context, snap hypervisor.Snapshot, d hypervisor.DiskInfo, prev *repository.Manifest, pw *repository.PointWriter, forceFull bool, progress func(string, int64, int64)) (_ diskResult, err error) {
	disk, err := snap.OpenDisk(ctx, d.ID)
	if err != nil {
		return diskResult{}, fmt.Errorf("open: %w", err)
	}
	defer func() {
		if cerr := disk.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	size := disk.Size()
	cs := s.repo.Config().ChunkSize
	res := diskResult{rec: repository.DiskRecord{ID: d.ID, Name: d.Name, Size: size, Bus: d.Bus, BootOrder: d.BootOrder}}

	// alloc nil means "all of it may hold data".
	var alloc []hypervisor.Extent
	if er, ok := disk.(hypervisor.ExtentReporter); ok {
		if alloc, err = er.AllocatedExtents(ctx); err != nil {
			return diskResult{}, fmt.Errorf("allocated extents: %w", err)
		}
		if alloc == nil {
			alloc = []hypervisor.Extent{}
		}
	}
	ct, tracked := disk.(hypervisor.ChangeTracker)
	if tracked {
		res.rec.ChangeToken = ct.ChangeToken()
	}

	var spans []pipeline.Span
	res.kind = PointFull
	var prevDisk *repository.DiskRecord
	if prev != nil {
		for i := range prev.Disks {
			if prev.Disks[i].ID == d.ID {
				prevDisk = &prev.Disks[i]
			}
		}
	}
	switch {
	case prev == nil:
		res.reason = "first backup"
	case prevDisk == nil:
		res.reason = "new disk"
	case forceFull:
		res.reason = "forced full"
	case !tracked || res.rec.ChangeToken == "" || prevDisk.ChangeToken == "":
		res.reason = "no change tracking"
	case prevDisk.Size != size:
		res.reason = fmt.Sprintf("size changed from %d to %d bytes", prevDisk.Size, size)
	default:
		changed, err := ct.ChangedExtents(ctx, prevDisk.ChangeToken)
		if errors.Is(err, hypervisor.ErrTokenInvalid) {
			res.reason = "token invalid: " + err.Error()
			break
		}
		if err != nil {
			return diskResult{}, fmt.Errorf("changed extents: %w", err)
		}
		idx, err := s.repo.ReadIndex(ctx, prevDisk.Index)
		if err != nil {
			if ctx.Err() != nil {
				return diskResult{}, err
			}
			res.reason = "previous index unreadable: " + err.Error()
			break
		}
		if idx.ChunkSize() != cs || idx.Size() != size {
			res.reason = fmt.Sprintf("previous index has %d-byte chunks over %d bytes", idx.ChunkSize(), idx.Size())
			break
		}
		res.index = idx // ReadIndex returns a fresh index: no copy needed
		res.kind = PointIncremental
		res.reason = "changed blocks since " + prev.ID
		spans = pipeline.Touched(changed, size, cs)
	}
	if res.kind == PointFull {
		res.index = repository.NewIndex(size, cs)
		if alloc != nil {
			spans = pipeline.Touched(alloc, size, cs)
		} else {
			spans = pipeline.All(size, cs)
		}
	}

	var total int64
	var rr []hypervisor.Extent
	for _, sp := range spans {
		for i := sp.Lo; i < sp.Hi; i++ {
			off, end := pipeline.SlotRange(i, size, cs)
			rr = pipeline.Within(rr[:0], alloc, off, end)
			for _, e := range rr {
				total += e.Length
			}
		}
	}
	meter := pipeline.NewMeter(total, func(done, total int64) { progress(d.ID, done, total) })
	var read, fresh, stored atomic.Int64
	cur := pipeline.NewCursor(spans)
	g, gctx := errgroup.WithContext(ctx)
	for range min(s.cfg.Workers, max(pipeline.Count(spans), 1)) {
		g.Go(func() error {
			var rr []hypervisor.Extent
			for {
				i, ok := cur.Next()
				if !ok {
					return nil
				}
				off, end := pipeline.SlotRange(i, size, cs)
				rr = pipeline.Within(rr[:0], alloc, off, end)
				if len(rr) == 0 {
					res.index.Set(i, repository.ZeroChunk)
					continue
				}
				n, st, err := s.backupChunk(gctx, disk, pw, res.index, i, off, end, rr)
				if err != nil {
					return fmt.Errorf("chunk at %d: %w", off, err)
				}
				read.Add(n)
				if st.New {
					fresh.Add(end - off)
					stored.Add(st.Stored)
				}
				meter.Add(n)
			}
		})
	}
	if err := g.Wait(); err != nil {
		return diskResult{}, err
	}
	res.rec.Stats = repository.DiskStats{BytesRead: read.Load(), BytesNew: fresh.Load(), BytesStored: stored.Load()}
	return res, nil
}

// backupChunk reads the parts rr of slot i ([off, end)), and stores the
// chunk unless it is all zeros. It returns the bytes read.
func (s *Service) backupChunk(ctx context.Context, disk hypervisor.Disk, pw *repository.PointWriter, idx *repository.Index, i int, off, end int64, rr []hypervisor.Extent) (int64, repository.PutResult, error) {
	buf, err := s.pool.Get(ctx)
	if err != nil {
		return 0, repository.PutResult{}, err
	}
	defer s.pool.Put(buf)
	p := buf[:end-off]
	pos, n := off, int64(0)
	for _, e := range rr {
		clear(p[pos-off : e.Offset-off])
		if err := waitN(ctx, s.readLim, e.Length); err != nil {
			return n, repository.PutResult{}, err
		}
		if err := pipeline.ReadFull(disk, p[e.Offset-off:e.End()-off], e.Offset); err != nil {
			return n, repository.PutResult{}, fmt.Errorf("read %d bytes at %d: %w", e.Length, e.Offset, err)
		}
		n += e.Length
		pos = e.End()
	}
	clear(p[pos-off:])
	if pipeline.IsZero(p) {
		idx.Set(i, repository.ZeroChunk)
		return n, repository.PutResult{}, nil
	}
	id := s.repo.HashChunk(p)
	st, err := pw.PutChunk(ctx, id, p)
	if err != nil {
		return n, st, fmt.Errorf("store: %w", err)
	}
	idx.Set(i, id)
	if st.New {
		if err := waitN(ctx, s.wrLim, st.Stored); err != nil {
			return n, st, err
		}
	}
	return n, st, nil
}
