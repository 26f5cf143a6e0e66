package backup

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/retention"
	"github.com/vmbackup/vmbackup/schedule"
)

// planRun is what a run of a plan adds to its job and history record.
type planRun struct {
	due        time.Time
	full       bool
	catchUp    bool
	reason     string
	retention  *RetentionReport
	recompress *repository.RecompressReport
}

// waitNote is what a run due at due waited for before it started.
type waitNote struct {
	due time.Time
	why string
}

// addReason adds why to the run's reason.
func (r *planRun) addReason(why string) {
	if r.reason != "" {
		r.reason += "; "
	}
	r.reason += why
}

// RetentionReport says what a plan's retention decided and did.
type RetentionReport struct {
	// Policy describes the rules applied (retention.Policy.String).
	Policy string `json:"policy"`
	// DryRun: nothing was deleted; Forgotten is what would have been.
	DryRun bool `json:"dryRun,omitempty"`
	// Kept are the points that stay, each with the rules that keep it,
	// and Forgotten those deleted (or, on a dry run, that would be); both
	// newest first.
	Kept      []PointDecision `json:"kept"`
	Forgotten []PointDecision `json:"forgotten"`
	// Errors are deletions that failed; those points are still there and
	// are forgotten again by the next run.
	Errors []string `json:"errors,omitempty"`
	// GC is the garbage collection started after the deletions, if one
	// was due (see Config.GCInterval); GCError why it failed.
	GC      *repository.GCReport `json:"gc,omitempty"`
	GCError string               `json:"gcError,omitempty"`
}

// PointDecision is one restore point as retention judged it: the rules
// that keep it, or none if it is forgotten.
type PointDecision struct {
	ID      string    `json:"id"`
	VMID    string    `json:"vmID"`
	Created time.Time `json:"created"`
	Reasons []string  `json:"reasons,omitempty"`
}

// PlanStatus is a plan with what the Service knows of it now.
type PlanStatus struct {
	Plan plan.Plan
	// Scheduled is true while the Scheduler holds the plan (StartPlans was
	// called and the plan is not stopped); Next, Running, Waiting and
	// Paused are the Scheduler's.
	Scheduled bool
	Next      time.Time
	Running   bool
	Waiting   bool
	Paused    bool
	// LastRun is the newest record of a run that was made (not skipped),
	// nil if none; LastSkip the newest skipped one.
	LastRun  *JobRecord
	LastSkip *JobRecord
	// Points is how many restore points the plan has, VMs of how many VMs.
	Points int
	VMs    int
	// LogicalBytes is what restoring every point would write;
	// StoredBytes what the plan's points take in the bucket (chunks shared
	// between them once, chunks shared with other plans in full), and
	// CompressionRatio their plaintext over their stored size.
	LogicalBytes     int64
	StoredBytes      int64
	CompressionRatio float64
}

// StartPlans makes the Scheduler run every plan of Config.Plans by itself,
// each according to its State, and catches up (once) on runs missed since
// the plan's last run in the history. Records of jobs left pending or
// running by a process that is gone (ended, on this host; no longer
// rewriting its records, on any host: Config.JobHeartbeat) become failed
// ("interrupted"). Call it again to pick up plans that
// other processes changed; plans changed through PutPlan, SetPlanState,
// DeletePlan and RemoveVMFromPlan are rescheduled at once. Close stops the
// scheduling. Start plans in one process per repository: two Services that
// both start a plan both run it.
func (s *Service) StartPlans(ctx context.Context) error {
	s.plansMu.Lock()
	defer s.plansMu.Unlock()
	if s.closed {
		return errors.New("backup: start plans: service closed")
	}
	if s.sched == nil {
		if s.cfg.Scheduler != nil {
			s.sched = s.cfg.Scheduler
		} else {
			s.sched = schedule.NewLocal(&schedule.Options{
				Clock:       s.cfg.Clock,
				MaxParallel: s.cfg.MaxBackupJobs,
				OnEvent:     s.ScheduleEvent,
				Logger:      s.log,
			})
			s.ownSched = true
		}
	}
	plans, err := s.plans.List(ctx)
	if err != nil {
		return fmt.Errorf("backup: start plans: %w", err)
	}
	var errs []error
	seen := map[string]bool{}
	for _, p := range plans {
		seen[p.ID] = true
		if err := s.schedulePlanLocked(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	for id := range s.started {
		if !seen[id] {
			s.unscheduleLocked(id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("backup: start plans: %w", err)
	}
	return nil
}

// schedulePlanLocked brings p's scheduling in line with its State, if
// plans are started. s.plansMu is held.
func (s *Service) schedulePlanLocked(ctx context.Context, p plan.Plan) error {
	if s.sched == nil {
		return nil
	}
	var lastRun time.Time
	if _, ok := s.started[p.ID]; !ok {
		// First start in this process: settle the records of jobs whose
		// process ended, and look up the last run for catch-up.
		if err := s.history.markInterrupted(ctx, p.ID); err != nil {
			return fmt.Errorf("plan %q: history: %w", p.ID, err)
		}
		rec, err := s.history.newest(ctx, p.ID, false, func(r *JobRecord) bool { return !r.Due.IsZero() })
		if err != nil {
			return fmt.Errorf("plan %q: last run: %w", p.ID, err)
		}
		if rec != nil {
			lastRun = rec.Due
		}
	}
	if err := p.ApplyTo(s.sched, lastRun, s.scheduledRun); err != nil {
		return err
	}
	if p.State == plan.Stopped {
		delete(s.started, p.ID)
	} else {
		s.started[p.ID] = p.Version
	}
	return nil
}

func (s *Service) unscheduleLocked(id string) {
	delete(s.started, id)
	if s.sched == nil {
		return
	}
	if err := s.sched.Stop(id); err != nil && !errors.Is(err, schedule.ErrUnknownPlan) {
		s.log.Warn("unschedule plan", "plan", id, "err", err)
	}
}

// PutPlan validates p, stores it (p.Version 0 creates the plan; otherwise
// p.Version must be the version read, or the error wraps plan.ErrConflict)
// and, once StartPlans was called, reschedules it according to its State:
// set State to plan.Paused, plan.Stopped or plan.Enabled to pause, stop or
// resume it. It returns the plan as stored. An invalid plan gives an error
// wrapping plan.ErrInvalid whose plan.Problems name every field at fault.
func (s *Service) PutPlan(ctx context.Context, p plan.Plan) (plan.Plan, error) {
	if err := p.Validate(); err != nil {
		return plan.Plan{}, fmt.Errorf("backup: put plan %q: %w", p.ID, err)
	}
	s.plansMu.Lock()
	defer s.plansMu.Unlock()
	stored, err := s.plans.Put(ctx, p)
	if err != nil {
		return plan.Plan{}, fmt.Errorf("backup: put plan %q: %w", p.ID, err)
	}
	if err := s.schedulePlanLocked(ctx, stored); err != nil {
		return stored, fmt.Errorf("backup: put plan %q: stored, but %w", p.ID, err)
	}
	return stored, nil
}

// SetPlanState pauses (plan.Paused), stops (plan.Stopped) or resumes
// (plan.Enabled) plan id: it stores the new State, retrying on a
// concurrent change, and reschedules the plan. A paused plan's due times
// are recorded as skipped; a stopped plan is not scheduled at all. A run in
// progress finishes either way.
func (s *Service) SetPlanState(ctx context.Context, id string, state plan.State) (plan.Plan, error) {
	for {
		p, err := s.Plan(ctx, id)
		if err != nil {
			return plan.Plan{}, err
		}
		p.State = state
		stored, err := s.PutPlan(ctx, p)
		if !errors.Is(err, plan.ErrConflict) {
			return stored, err
		}
	}
}

// Plan returns the plan with that id (an error wrapping plan.ErrNotFound if
// there is none).
func (s *Service) Plan(ctx context.Context, id string) (plan.Plan, error) {
	p, err := s.plans.Get(ctx, id)
	if err != nil {
		return plan.Plan{}, fmt.Errorf("backup: plan %q: %w", id, err)
	}
	return p, nil
}

// Plans returns every plan, sorted by id.
func (s *Service) Plans(ctx context.Context) ([]plan.Plan, error) {
	ps, err := s.plans.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("backup: plans: %w", err)
	}
	return ps, nil
}

// DeletePlan stops and deletes plan id. With deletePoints its restore
// points are deleted first (their chunks go at the next garbage
// collection); otherwise they stay, and only retention of another plan or
// DeletePoint removes them. A run in progress finishes. If deleting a point
// fails, the plan is kept so that the call can be repeated.
func (s *Service) DeletePlan(ctx context.Context, id string, deletePoints bool) error {
	s.plansMu.Lock()
	defer s.plansMu.Unlock()
	p, err := s.plans.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("backup: delete plan %q: %w", id, err)
	}
	s.unscheduleLocked(id)
	if deletePoints {
		if _, err := s.deletePoints(ctx, repository.Filter{PlanID: id}); err != nil {
			return fmt.Errorf("backup: delete plan %q: %w", id, err)
		}
	}
	if err := s.plans.Delete(ctx, id, p.Version); err != nil {
		return fmt.Errorf("backup: delete plan %q: %w", id, err)
	}
	return nil
}

// RemoveVMFromPlan takes vmID out of the VMIDs of plan planID, and with
// deletePoints deletes the VM's restore points made by the plan. A VM that
// the plan reaches through a label selector leaves it when its labels
// change; RemoveVMFromPlan then names the selectors in its error. It returns the
// plan as stored.
func (s *Service) RemoveVMFromPlan(ctx context.Context, planID, vmID string, deletePoints bool) (plan.Plan, error) {
	p, err := s.Plan(ctx, planID)
	if err != nil {
		return plan.Plan{}, err
	}
	i := slices.Index(p.Objects.VMIDs, vmID)
	if i < 0 {
		return plan.Plan{}, fmt.Errorf("backup: remove vm %q from plan %q: not in objects.vmIDs %q (selectors %v match VMs by their labels)", vmID, planID, p.Objects.VMIDs, p.Objects.Selectors)
	}
	p.Objects.VMIDs = slices.Delete(p.Objects.VMIDs, i, i+1)
	stored, err := s.PutPlan(ctx, p)
	if err != nil {
		return plan.Plan{}, err
	}
	if deletePoints {
		if _, err := s.deletePoints(ctx, repository.Filter{PlanID: planID, VMID: vmID}); err != nil {
			return stored, fmt.Errorf("backup: remove vm %q from plan %q: %w", vmID, planID, err)
		}
	}
	return stored, nil
}

// deletePoints deletes the points f selects and returns their ids.
func (s *Service) deletePoints(ctx context.Context, f repository.Filter) ([]string, error) {
	ms, err := s.repo.ListPoints(ctx, f)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, m := range ms {
		if err := s.repo.DeletePoint(ctx, m.ID); err != nil && !errors.Is(err, repository.ErrNotFound) {
			return ids, fmt.Errorf("delete point %s: %w", m.ID, err)
		}
		ids = append(ids, m.ID)
	}
	return ids, nil
}

// RunPlan runs plan id now, by hand, whatever its schedule, window and
// State: a full backup if full, else incremental where possible. Its points
// are marked manual, so retention keeps them unless the plan's retention
// sets ForgetManual. Retention is applied after it as after a scheduled
// run.
func (s *Service) RunPlan(ctx context.Context, id string, full bool) (*Job, error) {
	p, err := s.Plan(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.runPlan(ctx, p, &planRun{full: full}, true)
}

// scheduledRun is the RunFunc the Scheduler calls for every plan.
func (s *Service) scheduledRun(ctx context.Context, r schedule.Run) error {
	run := &planRun{due: r.Due, full: r.Full, catchUp: r.CatchUp}
	s.schedMu.Lock()
	if w, ok := s.waited[r.PlanID]; ok && w.due.Equal(r.Due) {
		run.reason = w.why
		delete(s.waited, r.PlanID)
	}
	s.schedMu.Unlock()
	skip := func(why string) {
		job := s.newJob(KindBackup, r.PlanID, false)
		job.run, job.State = run, JobSkipped
		run.addReason(why)
		s.record(job)
	}
	p, err := s.plans.Get(ctx, r.PlanID)
	if err != nil {
		if errors.Is(err, plan.ErrNotFound) {
			skip("the plan was deleted")
			s.plansMu.Lock()
			s.unscheduleLocked(r.PlanID)
			s.plansMu.Unlock()
			return nil
		}
		skip("the plan could not be read: " + err.Error())
		return err
	}
	// Another process may have changed the plan: follow its new timing
	// and state from now on.
	s.plansMu.Lock()
	if v, ok := s.started[p.ID]; ok && v != p.Version && !s.closed {
		if err := s.schedulePlanLocked(ctx, p); err != nil {
			s.log.Warn("reschedule changed plan", "plan", p.ID, "err", err)
		}
	}
	s.plansMu.Unlock()
	if p.State != plan.Enabled && p.State != "" {
		skip(fmt.Sprintf("the plan is %s", p.State))
		return nil
	}
	_, err = s.runPlan(ctx, p, run, false)
	return err
}

// runPlan backs up the plan's VMs as one job, then applies its retention.
func (s *Service) runPlan(ctx context.Context, p plan.Plan, run *planRun, manual bool) (*Job, error) {
	job := s.newJob(KindBackup, p.ID, manual)
	job.run = run
	fail := func(err error) (*Job, error) {
		job.State, job.Err = JobFailed, err
		run.addReason(err.Error())
		job.Started, job.Finished = s.now(), s.now()
		if ctx.Err() != nil {
			job.State = JobCancelled
		}
		s.record(job)
		s.log.Error("plan run failed", "plan", p.ID, "job", job.ID, "err", err)
		return job, fmt.Errorf("backup: plan %q: %w", p.ID, err)
	}
	vms, err := s.hv.ListVMs(ctx)
	if err != nil {
		return fail(fmt.Errorf("list VMs: %w", err))
	}
	inventory := make([]plan.VM, len(vms))
	for i, vm := range vms {
		inventory[i] = plan.VM{ID: vm.ID, Labels: vm.Labels}
	}
	ids := p.Objects.Resolve(inventory)
	if len(ids) == 0 {
		return fail(errors.New("no VM matches the plan's objects"))
	}
	consistency := hypervisor.CrashConsistent
	if p.Consistency.Mode == plan.ApplicationConsistent {
		consistency = hypervisor.ApplicationConsistent
	}
	req := Request{
		VMIDs:              ids,
		PlanID:             p.ID,
		Manual:             manual,
		ForceFull:          run.full,
		Consistency:        consistency,
		AllowCrashFallback: p.Consistency.FallbackToCrash,
		Codec:              p.Compression.CodecName(),
		Limits:             &Limits{ParallelVMs: p.Limits.ParallelVMs, Retries: p.Limits.Retries, RetryDelay: time.Duration(p.Limits.RetryInterval)},
	}
	lim, err := s.jobLimits(req)
	if err != nil {
		return fail(err)
	}
	_, jobErr := s.backupJob(ctx, job, req, ids, lim)

	s.schedMu.Lock()
	overrun := s.overrun[p.ID]
	s.schedMu.Unlock()
	switch {
	case errors.Is(context.Cause(ctx), schedule.ErrWindowClosed):
		run.addReason("stopped when the backup window closed (overrun policy stop): no restore point was made")
	case overrun != "":
		run.addReason(overrun)
	}
	var backedUp, points []string
	for _, r := range job.VMs {
		if r.State == VMSucceeded {
			backedUp = append(backedUp, r.VMID)
			points = append(points, r.PointID)
		}
	}
	if len(backedUp) > 0 && ctx.Err() == nil {
		rep, err := s.applyRetention(ctx, p, backedUp, false)
		if err != nil {
			rep = &RetentionReport{Errors: []string{err.Error()}}
		}
		run.retention = rep
		run.recompress = s.queueRecompress(ctx, p, points)
	}
	if run.reason != "" || run.retention != nil {
		s.record(job) // the record runJob wrote, with the run's outcome
	}
	if jobErr != nil {
		return job, fmt.Errorf("backup: plan %q: %w", p.ID, jobErr)
	}
	return job, nil
}

// ApplyRetention applies plan id's retention to all its restore points now
// and, if points were forgotten and one is due, starts a garbage
// collection. With dryRun nothing is deleted and the report says what
// would be. The Service applies retention by itself after every run of a
// plan that backed up at least one VM, to the VMs of that run.
func (s *Service) ApplyRetention(ctx context.Context, id string, dryRun bool) (*RetentionReport, error) {
	p, err := s.Plan(ctx, id)
	if err != nil {
		return nil, err
	}
	rep, err := s.applyRetention(ctx, p, nil, dryRun)
	if err != nil {
		return nil, fmt.Errorf("backup: retention of plan %q: %w", id, err)
	}
	return rep, nil
}

// applyRetention applies p's retention to its points of the VMs vmIDs (nil:
// all of the plan's points). Points of VMs that left the plan are only
// forgotten by ApplyRetention, so removing a VM and keeping its points
// keeps them.
func (s *Service) applyRetention(ctx context.Context, p plan.Plan, vmIDs []string, dryRun bool) (*RetentionReport, error) {
	policy := p.RetentionPolicy()
	ms, err := s.repo.ListPoints(ctx, repository.Filter{PlanID: p.ID})
	if err != nil {
		return nil, err
	}
	var points []retention.Point
	for _, m := range ms {
		if vmIDs == nil || slices.Contains(vmIDs, m.VMID) {
			points = append(points, retention.Point{ID: m.ID, VMID: m.VMID, Time: m.Created, Manual: m.Manual})
		}
	}
	ds, err := retention.Apply(points, policy, s.now())
	if err != nil {
		return nil, err
	}
	rep := &RetentionReport{Policy: policy.String(), DryRun: dryRun, Kept: []PointDecision{}, Forgotten: []PointDecision{}}
	for _, d := range ds {
		pd := PointDecision{ID: d.Point.ID, VMID: d.Point.VMID, Created: d.Point.Time, Reasons: d.Reasons}
		if d.Keep {
			rep.Kept = append(rep.Kept, pd)
			continue
		}
		if !dryRun {
			if err := s.repo.DeletePoint(ctx, d.Point.ID); err != nil && !errors.Is(err, repository.ErrNotFound) {
				rep.Errors = append(rep.Errors, fmt.Sprintf("delete point %s: %v", d.Point.ID, err))
				continue
			}
		}
		rep.Forgotten = append(rep.Forgotten, pd)
	}
	s.log.Info("retention applied", "plan", p.ID, "policy", rep.Policy, "kept", len(rep.Kept), "forgotten", len(rep.Forgotten), "dry_run", dryRun)
	if !dryRun && len(rep.Forgotten) > 0 {
		rep.GC, err = s.maybeGC(ctx)
		if err != nil {
			rep.GCError = err.Error()
		}
	}
	return rep, nil
}

// maybeGC runs a garbage collection unless one ran less than
// Config.GCInterval ago or is running; it returns nil, nil if it ran none.
func (s *Service) maybeGC(ctx context.Context) (*repository.GCReport, error) {
	now := s.now()
	s.schedMu.Lock()
	due := !s.gcRunning && (s.lastGC.IsZero() || now.Sub(s.lastGC) >= s.cfg.GCInterval)
	if due {
		s.gcRunning = true
	}
	s.schedMu.Unlock()
	if !due {
		return nil, nil
	}
	rep, err := s.repo.GC(ctx, nil)
	s.schedMu.Lock()
	s.gcRunning, s.lastGC = false, now
	s.schedMu.Unlock()
	if err != nil {
		s.log.Warn("garbage collection", "err", err)
		return rep, err
	}
	s.log.Info("garbage collection", "chunks_removed", rep.ChunksRemoved, "bytes_freed", rep.BytesFreed, "skipped", rep.Skipped)
	return rep, nil
}

// PlanStatus returns plan id with its scheduling, last run and the size of
// its restore points.
func (s *Service) PlanStatus(ctx context.Context, id string) (*PlanStatus, error) {
	p, err := s.Plan(ctx, id)
	if err != nil {
		return nil, err
	}
	st := &PlanStatus{Plan: p}
	s.plansMu.Lock()
	sched := s.sched
	_, started := s.started[id]
	s.plansMu.Unlock()
	if started {
		if ss, err := sched.Status(id); err == nil {
			st.Scheduled, st.Next, st.Running, st.Waiting, st.Paused = true, ss.Next, ss.Running, ss.Waiting, ss.Paused
		}
	}
	s.waitWrites()
	if st.LastRun, err = s.history.newest(ctx, id, false, func(*JobRecord) bool { return true }); err != nil {
		return nil, fmt.Errorf("backup: status of plan %q: %w", id, err)
	}
	if st.LastSkip, err = s.history.newest(ctx, id, true, func(*JobRecord) bool { return true }); err != nil {
		return nil, fmt.Errorf("backup: status of plan %q: %w", id, err)
	}
	ms, err := s.repo.ListPoints(ctx, repository.Filter{PlanID: id})
	if err != nil {
		return nil, fmt.Errorf("backup: status of plan %q: %w", id, err)
	}
	st.Points = len(ms)
	vms := map[string]bool{}
	for _, m := range ms {
		vms[m.VMID] = true
	}
	st.VMs = len(vms)
	if len(ms) > 0 {
		stats, err := s.repo.PointStats(ctx, ms...)
		if err != nil {
			return nil, fmt.Errorf("backup: status of plan %q: %w", id, err)
		}
		st.LogicalBytes, st.StoredBytes, st.CompressionRatio = stats.LogicalBytes, stats.StoredBytes, stats.CompressionRatio()
	}
	return st, nil
}

// ScheduleEvent takes a Scheduler's event: skipped and missed runs become
// job records, overruns are noted for the run's record, and starts and
// finishes are counted for WaitIdle. The Scheduler the Service makes calls
// it by itself; pass it as schedule.Options.OnEvent to a Scheduler of your
// own. It returns at once (records are written in the background).
func (s *Service) ScheduleEvent(e schedule.Event) {
	var reason string
	s.schedMu.Lock()
	switch e.Kind {
	case schedule.EventStarted:
		s.active++
	case schedule.EventFinished:
		s.active--
		delete(s.overrun, e.PlanID)
		s.idle.Broadcast()
	case schedule.EventOverrun:
		s.overrun[e.PlanID] = string(e.Reason)
	case schedule.EventDeferred:
		s.waited[e.PlanID] = waitNote{e.Due, "due outside the backup window: waited for it to open at " + e.Until.Format(time.RFC3339)}
	case schedule.EventQueued:
		s.waited[e.PlanID] = waitNote{e.Due, "waited for a free slot (at most Config.MaxBackupJobs runs at once)"}
	case schedule.EventSkipped:
		reason = string(e.Reason)
		if w, ok := s.waited[e.PlanID]; ok && w.due.Equal(e.Due) {
			delete(s.waited, e.PlanID) // the run that waited will not be made
		}
	case schedule.EventMissed:
		reason = fmt.Sprintf("missed while the service was not running: %d runs due from %s to %s", e.Missed, e.First.Format(time.RFC3339), e.Due.Format(time.RFC3339))
	}
	s.schedMu.Unlock()
	if reason == "" {
		return
	}
	job := s.newJob(KindBackup, e.PlanID, false)
	job.State, job.created = JobSkipped, e.At
	job.run = &planRun{due: e.Due, full: e.Full, catchUp: e.CatchUp, reason: reason}
	s.goWrite(func() { s.record(job) })
}

// goWrite runs write, a history record's write, in its own goroutine,
// counted so that History and Close wait for it: callers run on a
// Scheduler's or Clock's goroutine, which must not wait for the bucket.
func (s *Service) goWrite(write func()) {
	s.schedMu.Lock()
	s.writing++
	s.schedMu.Unlock()
	go func() {
		defer func() {
			s.schedMu.Lock()
			s.writing--
			s.idle.Broadcast()
			s.schedMu.Unlock()
		}()
		write()
	}()
}

// WaitIdle waits until no scheduled run is going and every history record
// of the Scheduler's events is written. It is for simulations and tests on
// a schedule.FakeClock: advance the clock, then WaitIdle, then look.
func (s *Service) WaitIdle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.schedMu.Lock()
		s.idle.Broadcast()
		s.schedMu.Unlock()
	})
	defer stop()
	s.schedMu.Lock()
	defer s.schedMu.Unlock()
	for s.active > 0 || s.writing > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		s.idle.Wait()
	}
	return nil
}

// waitWrites waits for the history records of scheduler events in flight.
func (s *Service) waitWrites() {
	s.schedMu.Lock()
	for s.writing > 0 {
		s.idle.Wait()
	}
	s.schedMu.Unlock()
}

// Close stops the plans' scheduling (closing the Scheduler the Service
// made, which waits for runs in progress, or cancels them when ctx ends
// first) and waits for recompressions and history records being written.
// Recompressions still waiting for their window to close are dropped (their
// chunks stay in the fast codec; Service.Recompress catches up). Jobs asked for by
// direct calls are not affected; the Repository is not closed.
func (s *Service) Close(ctx context.Context) error {
	s.schedMu.Lock()
	s.stopping = true
	for id, q := range s.recompressQ {
		q.timer.Stop()
		s.log.Warn("closed before the window's recompression", "plan", id, "points", len(q.points))
	}
	clear(s.recompressQ)
	s.schedMu.Unlock()
	s.plansMu.Lock()
	s.closed = true
	sched, own := s.sched, s.ownSched
	if !own {
		for id := range s.started {
			s.unscheduleLocked(id)
		}
	}
	s.plansMu.Unlock()
	var err error
	if sched != nil && own {
		err = sched.Close(ctx)
	}
	s.schedMu.Lock()
	for s.recompressing > 0 || s.writing > 0 {
		s.idle.Wait()
	}
	s.schedMu.Unlock()
	return err
}
