package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/schedule"
)

// JobRecord is the job history's account of one job, or of one scheduled
// run that was not made (State JobSkipped). Records are JSON objects in the
// repository's bucket:
//
//	history/plan/<plan id>/<inverted time>-<inverted sequence>-<record id>.run.json   a job of a plan
//	history/plan/<plan id>/<inverted time>-<inverted sequence>-<record id>.skip.json  a run of a plan not made
//	history/jobs/<inverted time>-<inverted sequence>-<record id>.run.json             a job of no plan (restores, ad-hoc backups)
//
// The inverted creation time (math.MaxInt64 minus Unix nanoseconds, 19
// digits) and sequence number (within the Service, 16 hex digits) make a
// listing start with the newest record. A job's record is written when
// the job is created (pending), when it starts (running), every
// Config.JobHeartbeat while it is pending or running, and when it ends;
// the newest Config.HistoryLimit records of each plan are kept. A pending
// or running record whose process is gone (it ended, on this host, or it
// stopped rewriting the record, on any host) is marked failed
// ("interrupted") by the first Service that reads it.
type JobRecord struct {
	ID     string   `json:"id"`
	Kind   JobKind  `json:"kind"`
	PlanID string   `json:"planID,omitempty"`
	Manual bool     `json:"manual,omitempty"`
	State  JobState `json:"state"`
	// Reason says why a run was skipped, stopped or failed as a whole
	// (no VM matched, the plan was deleted, the window closed).
	Reason string `json:"reason,omitempty"`
	// Due, Full and CatchUp describe a run the Scheduler fired: its
	// scheduled time, whether it was a full run and whether it made up for
	// runs missed while the Service was down.
	Due     time.Time `json:"due,omitzero"`
	Full    bool      `json:"full,omitempty"`
	CatchUp bool      `json:"catchUp,omitempty"`
	// Created is when the record was made, Started and Finished when the
	// job ran.
	Created  time.Time  `json:"created"`
	Started  time.Time  `json:"started,omitzero"`
	Finished time.Time  `json:"finished,omitzero"`
	VMs      []VMRecord `json:"vms,omitempty"`
	// Error is the job's error, as text.
	Error string `json:"error,omitempty"`
	// Retention is what the plan's retention did after the run.
	Retention *RetentionReport `json:"retention,omitempty"`
	// Recompress is what recompressing the run's chunks did (a run of a
	// plan without a window, or a recompress job after the window).
	Recompress *repository.RecompressReport `json:"recompress,omitempty"`
	// Host and PID name the process that ran the job, so that a Service
	// starting on the same host can tell a job whose process ended without
	// finishing it (a crash) from one still going (see StartPlans).
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// Updated is when the job's process last wrote the record, on its
	// clock, and Heartbeat how often it rewrites the record while the job
	// is pending or running (Config.JobHeartbeat). Such a record that
	// has not been rewritten for staleBeats heartbeats belongs to a
	// process that is gone, on whichever host.
	Updated   time.Time     `json:"updated,omitzero"`
	Heartbeat time.Duration `json:"heartbeat,omitempty"`
}

// VMRecord is a VMResult as the history keeps it.
type VMRecord struct {
	VMID         string                 `json:"vmID"`
	VMName       string                 `json:"vmName,omitempty"`
	State        VMState                `json:"state"`
	PointID      string                 `json:"pointID,omitempty"`
	Kind         string                 `json:"kind,omitempty"`
	Reason       string                 `json:"reason,omitempty"`
	Consistency  hypervisor.Consistency `json:"consistency,omitempty"`
	Note         string                 `json:"note,omitempty"`
	BytesTotal   int64                  `json:"bytesTotal,omitempty"`
	BytesRead    int64                  `json:"bytesRead,omitempty"`
	BytesNew     int64                  `json:"bytesNew,omitempty"`
	BytesStored  int64                  `json:"bytesStored,omitempty"`
	BytesWritten int64                  `json:"bytesWritten,omitempty"`
	Duration     time.Duration          `json:"duration,omitempty"`
	Retries      int                    `json:"retries,omitempty"`
	Error        string                 `json:"error,omitempty"`
	Warnings     []string               `json:"warnings,omitempty"`
}

func vmRecord(r *VMResult) VMRecord {
	v := VMRecord{
		VMID: r.VMID, VMName: r.VMName, State: r.State, PointID: r.PointID, Kind: r.Kind, Reason: r.Reason,
		Consistency: r.Consistency, Note: r.Note, BytesTotal: r.BytesTotal, BytesRead: r.BytesRead,
		BytesNew: r.BytesNew, BytesStored: r.BytesStored, BytesWritten: r.BytesWritten,
		Duration: r.Duration, Retries: r.Retries, Warnings: r.Warnings,
	}
	if r.Err != nil {
		v.Error = r.Err.Error()
	}
	return v
}

// Final reports whether the record will not change any more.
func (r *JobRecord) Final() bool {
	return r.State != JobPending && r.State != JobRunning
}

// history reads and writes job records in the repository's bucket.
type history struct {
	bucket *blob.Bucket
	limit  int
	log    *slog.Logger
	host   string           // this process's, for JobRecord.Host
	now    func() time.Time // the Service's clock
}

// interruptScan is how many of a plan's newest job records StartPlans
// reads, settling those of jobs whose process is gone.
const interruptScan = 20

// staleBeats is how many heartbeats a pending or running record may miss
// before its job is taken for interrupted: a few failed writes of a live
// process, or clocks a little apart, do not make its job look dead.
const staleBeats = 5

// abandoned says why the job of rec, pending or running, is not going on
// any more, or "" if it may be: a process on this host that has ended, or
// a record of any other process not rewritten for staleBeats heartbeats
// (its host down or cut off). Records without a heartbeat, from before it
// existed, are judged by their process only.
func (h *history) abandoned(rec *JobRecord, now time.Time) string {
	if rec.Final() || rec.Host == h.host && rec.PID == os.Getpid() {
		return ""
	}
	if rec.Host == h.host && !processAlive(rec.PID) {
		return fmt.Sprintf("interrupted: process %d on %s ended before the job did", rec.PID, rec.Host)
	}
	if rec.Heartbeat > 0 && !rec.Updated.IsZero() && now.Sub(rec.Updated) > staleBeats*rec.Heartbeat {
		return fmt.Sprintf("interrupted: process %d on %s stopped updating the job at %s", rec.PID, rec.Host, rec.Updated.UTC().Format(time.RFC3339))
	}
	return ""
}

// markInterrupted settles planID's newest job records: reading a record
// marks it failed if its job is abandoned (see read).
func (h *history) markInterrupted(ctx context.Context, planID string) error {
	keys, err := h.keys(ctx, planID)
	if err != nil {
		return err
	}
	seen := 0
	for _, k := range keys {
		if strings.HasSuffix(k, skipExt) {
			continue
		}
		if seen++; seen > interruptScan {
			break
		}
		if _, err := h.read(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

const (
	historyPrefix = "history/"
	historyWrite  = 30 * time.Second // a record write's own deadline, past the job's context
)

// dir is the prefix of planID's records ("" for jobs of no plan).
func (h *history) dir(planID string) string {
	if planID == "" {
		return historyPrefix + "jobs/"
	}
	return historyPrefix + "plan/" + planID + "/"
}

// key is where rec is kept; seq orders records of one Service made at the
// same instant (a fake clock's), newest first too.
func (h *history) key(rec *JobRecord, seq uint64) string {
	inv := math.MaxInt64 - rec.Created.UnixNano()
	ext := runExt
	if rec.State == JobSkipped {
		ext = skipExt
	}
	return fmt.Sprintf("%s%019d-%016x-%s%s", h.dir(rec.PlanID), inv, math.MaxUint64-seq, rec.ID, ext)
}

// The extensions of records of jobs and of skipped runs: a skipped run's
// record is written once, skipped, so its key can say so, and the newest
// run or skip is found without reading the records in between.
const (
	runExt  = ".run.json"
	skipExt = ".skip.json"
)

// put writes rec and, once it is final, prunes the oldest records of its
// plan beyond the limit. Failures are logged, not returned: a job's outcome
// never depends on its record.
func (h *history) put(ctx context.Context, rec *JobRecord, seq uint64) {
	h.write(ctx, h.key(rec, seq), rec)
}

// write writes rec at key, as put does.
func (h *history) write(ctx context.Context, key string, rec *JobRecord) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), historyWrite)
	defer cancel()
	b, err := json.Marshal(rec)
	if err == nil {
		err = h.bucket.WriteAll(ctx, key, b, &blob.WriterOptions{ContentType: "application/json", DisableContentTypeDetection: true})
	}
	if err == nil && rec.Final() {
		err = h.prune(ctx, rec.PlanID)
	}
	if err != nil {
		h.log.Warn("job history: write record", "record", rec.ID, "plan", rec.PlanID, "err", err)
	}
}

// keys lists planID's record keys, newest first.
func (h *history) keys(ctx context.Context, planID string) ([]string, error) {
	var keys []string
	it := h.bucket.List(&blob.ListOptions{Prefix: h.dir(planID), Delimiter: "/"})
	for {
		o, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		if !o.IsDir && strings.HasSuffix(o.Key, ".json") {
			keys = append(keys, o.Key)
		}
	}
	slices.Sort(keys)
	return keys, nil
}

func (h *history) prune(ctx context.Context, planID string) error {
	keys, err := h.keys(ctx, planID)
	if err != nil || len(keys) <= h.limit {
		return err
	}
	var errs []error
	for _, k := range keys[h.limit:] {
		if err := h.bucket.Delete(ctx, k); err != nil && !isNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// list returns up to n of planID's records (n ≤ 0: all), newest first.
func (h *history) list(ctx context.Context, planID string, n int) ([]JobRecord, error) {
	keys, err := h.keys(ctx, planID)
	if err != nil {
		return nil, err
	}
	if n > 0 && len(keys) > n {
		keys = keys[:n]
	}
	recs := make([]JobRecord, 0, len(keys))
	for _, k := range keys {
		rec, err := h.read(ctx, k)
		if err != nil {
			return nil, err
		}
		if rec != nil { // else pruned meanwhile
			recs = append(recs, *rec)
		}
	}
	return recs, nil
}

// newest returns planID's newest record of a skipped run (skipped) or of a
// job (!skipped) for which ok is true, nil if none.
func (h *history) newest(ctx context.Context, planID string, skipped bool, ok func(*JobRecord) bool) (*JobRecord, error) {
	keys, err := h.keys(ctx, planID)
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		if strings.HasSuffix(k, skipExt) != skipped {
			continue
		}
		rec, err := h.read(ctx, k)
		if err != nil {
			return nil, err
		}
		if rec != nil && ok(rec) {
			return rec, nil
		}
	}
	return nil, nil
}

// read reads the record at key; nil, nil if it is gone (pruned).
func (h *history) read(ctx context.Context, key string) (*JobRecord, error) {
	b, err := h.bucket.ReadAll(ctx, key)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var rec JobRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("record %s: %w", key, err)
	}
	if why := h.abandoned(&rec, h.now()); why != "" {
		h.settle(ctx, key, &rec, why)
	}
	return &rec, nil
}

// settle rewrites rec, kept at key, whose job is abandoned for reason why,
// as failed: "interrupted". A record is settled by whichever Service reads
// it first, so the history never shows a job as running forever.
func (h *history) settle(ctx context.Context, key string, rec *JobRecord, why string) {
	rec.State, rec.Finished = JobFailed, h.now()
	if rec.Reason != "" {
		why = rec.Reason + "; " + why
	}
	rec.Reason = why
	for i := range rec.VMs {
		if v := &rec.VMs[i]; v.State == VMPending || v.State == VMRunning {
			v.State, v.Error = VMFailed, "interrupted"
		}
	}
	h.write(ctx, key, rec)
	h.log.Warn("job history: job of a gone process marked failed", "record", rec.ID, "plan", rec.PlanID, "host", rec.Host, "pid", rec.PID)
}

// History returns the job records of plan planID ("" for jobs of no plan:
// restores and backups not asked by a plan), newest first, at most n of
// them (n ≤ 0: all that are kept). Skipped and missed scheduled runs are
// records too, with State JobSkipped and the reason. Records of jobs
// whose process is gone are marked failed ("interrupted") as they are
// read (see JobRecord).
func (s *Service) History(ctx context.Context, planID string, n int) ([]JobRecord, error) {
	s.waitWrites() // records of scheduler events still being written
	recs, err := s.history.list(ctx, planID, n)
	if err != nil {
		return nil, fmt.Errorf("backup: history of plan %q: %w", planID, err)
	}
	return recs, nil
}

// record writes job's record as it is now. While the job is pending or
// running, its heartbeat rewrites that record every Config.JobHeartbeat.
func (s *Service) record(job *Job) {
	rec := &JobRecord{
		ID: job.ID, Kind: job.Kind, PlanID: job.PlanID, Manual: job.Manual, State: job.State,
		Created: job.created, Started: job.Started, Finished: job.Finished,
		Host: s.history.host, PID: os.Getpid(), Heartbeat: s.cfg.JobHeartbeat,
	}
	if run := job.run; run != nil {
		rec.Due, rec.Full, rec.CatchUp, rec.Reason, rec.Retention, rec.Recompress = run.due, run.full, run.catchUp, run.reason, run.retention, run.recompress
	}
	for i := range job.VMs {
		rec.VMs = append(rec.VMs, vmRecord(&job.VMs[i]))
	}
	if job.Err != nil {
		rec.Error = job.Err.Error()
	}
	b := job.beat
	b.mu.Lock()
	defer b.mu.Unlock()
	rec.Updated = s.now()
	s.history.put(context.Background(), rec, job.seq)
	if rec.Final() {
		b.done = true
		if b.timer != nil {
			b.timer.Stop()
		}
		return
	}
	b.rec = rec
	if b.timer == nil && !b.done {
		b.timer = s.cfg.Clock.AfterFunc(s.cfg.JobHeartbeat, func() { s.beat(job) })
	}
}

// heartbeat is the state of a job's record rewrites. Its mutex orders them
// with the job's own record writes, so a rewrite never lands after the
// final record.
type heartbeat struct {
	mu    sync.Mutex
	rec   *JobRecord // the newest record written, while not final
	timer schedule.Timer
	done  bool // the final record is written
}

// beat rewrites job's newest record with a new Updated time and arms the
// next beat. It runs on the Clock's timer (inside FakeClock.Advance in
// tests), so the write goes to its own goroutine (goWrite).
func (s *Service) beat(job *Job) {
	s.goWrite(func() {
		b := job.beat
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.done {
			return
		}
		rec := *b.rec
		rec.Updated = s.now()
		s.history.put(context.Background(), &rec, job.seq)
		b.timer = s.cfg.Clock.AfterFunc(s.cfg.JobHeartbeat, func() { s.beat(job) })
	})
}

func isNotFound(err error) bool { return err != nil && gcerrors.Code(err) == gcerrors.NotFound }
