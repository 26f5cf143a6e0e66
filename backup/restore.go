package backup

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmbackup/vmbackup/restore"
)

// RestoreInPlace writes restore point pointID back onto its VM (or
// opts.VMID) as a job; see restore.InPlace. The Service fills in
// opts.Workers, MaxInFlightBytes, WriteLimiter, Progress and Logger where
// they are zero. Restores are not retried.
func (s *Service) RestoreInPlace(ctx context.Context, pointID string, opts restore.InPlaceOptions) (*Job, error) {
	point, err := s.repo.Point(ctx, pointID)
	if err != nil {
		return nil, fmt.Errorf("backup: restore in place: %w", err)
	}
	target := opts.VMID
	if target == "" {
		target = point.VMID
	}
	job := s.newJob(KindRestoreInPlace, "", true)
	return s.runJobOnce(ctx, job, target, func(ctx context.Context, r *VMResult, progress func(string, int64, int64)) error {
		o := opts
		o.Options = s.restoreOptions(o.Options, progress)
		res, err := restore.InPlace(ctx, s.hv, s.repo, point, &o)
		fillRestore(r, point.ID, res)
		return err
	})
}

// Rebuild creates a new VM from restore point pointID as a job; see
// restore.Rebuild. The job's VMResult names the new VM (VMID is the
// point's VM id until the new VM exists). Rebuilds are not retried.
func (s *Service) Rebuild(ctx context.Context, pointID string, opts restore.RebuildOptions) (*Job, error) {
	point, err := s.repo.Point(ctx, pointID)
	if err != nil {
		return nil, fmt.Errorf("backup: rebuild: %w", err)
	}
	job := s.newJob(KindRebuild, "", true)
	return s.runJobOnce(ctx, job, point.VMID, func(ctx context.Context, r *VMResult, progress func(string, int64, int64)) error {
		o := opts
		o.Options = s.restoreOptions(o.Options, progress)
		res, err := restore.Rebuild(ctx, s.hv, s.repo, point, &o)
		fillRestore(r, point.ID, res)
		if res != nil && res.VM.ID != "" {
			r.VMID = res.VM.ID
		}
		return err
	})
}

// runJobOnce runs a one-VM job without retries.
func (s *Service) runJobOnce(ctx context.Context, job *Job, vmID string, fn func(context.Context, *VMResult, func(string, int64, int64)) error) (*Job, error) {
	once := func(ctx context.Context, r *VMResult, progress func(string, int64, int64)) error {
		err := fn(ctx, r, progress)
		if err != nil && !errors.Is(err, errNoRetry) {
			err = noRetry{err}
		}
		return err
	}
	return s.runJob(ctx, job, []string{vmID}, Limits{ParallelVMs: 1}, once)
}

func (s *Service) restoreOptions(o restore.Options, progress func(string, int64, int64)) restore.Options {
	if o.Workers == 0 {
		o.Workers = s.cfg.Workers
	}
	if o.MaxInFlightBytes == 0 {
		o.MaxInFlightBytes = s.cfg.MaxInFlightBytes
	}
	if o.WriteLimiter == nil {
		o.WriteLimiter = s.wrLim
	}
	if o.Logger == nil {
		o.Logger = s.log
	}
	if o.Progress == nil {
		o.Progress = progress
	} else {
		user := o.Progress
		o.Progress = func(disk string, done, total int64) {
			user(disk, done, total)
			progress(disk, done, total)
		}
	}
	return o
}

func fillRestore(r *VMResult, pointID string, res *restore.Result) {
	r.PointID = pointID
	if res == nil {
		return
	}
	r.Restore = res
	if res.VM.Name != "" {
		r.VMName = res.VM.Name
	}
	r.BytesRead, r.BytesWritten = res.BytesRead, res.BytesWritten
	r.BytesTotal = 0
	for _, d := range res.Disks {
		r.BytesTotal += d.Size
	}
	r.Warnings = append(r.Warnings, res.Warnings...)
}

// errNoRetry marks an error that runVM must not retry.
var errNoRetry = errors.New("not retried")

type noRetry struct{ error }

func (e noRetry) Unwrap() error { return e.error }

func (e noRetry) Is(target error) bool { return target == errNoRetry }
