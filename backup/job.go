package backup

import (
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/restore"
)

// JobKind says what a job does.
type JobKind string

// Job kinds.
const (
	KindBackup         JobKind = "backup"
	KindRestoreInPlace JobKind = "restore-in-place"
	KindRebuild        JobKind = "rebuild"
	// KindRecompress rewrites the chunks a plan's window stored with a
	// fast codec (plan.Compression.RecompressTo); history only.
	KindRecompress JobKind = "recompress"
)

// JobState is the overall state of a job.
type JobState string

// Job states. A job is pending while it waits for one of the Service's
// slots (Config.MaxBackupJobs, MaxRestoreJobs), then running until it ends
// in one of the next four. Skipped is only found in the history: a
// scheduled run that was not made, with the reason.
const (
	JobPending         JobState = "pending"
	JobRunning         JobState = "running"
	JobSucceeded       JobState = "succeeded"        // every VM succeeded
	JobPartiallyFailed JobState = "partially failed" // some VMs failed, some succeeded
	JobFailed          JobState = "failed"           // no VM succeeded
	JobCancelled       JobState = "cancelled"        // the context ended before the job did
	JobSkipped         JobState = "skipped"          // a scheduled run not made (history only)
)

// VMState is the state of one VM within a job.
type VMState string

// VM states.
const (
	VMPending   VMState = "pending"
	VMRunning   VMState = "running"
	VMSucceeded VMState = "succeeded"
	VMFailed    VMState = "failed"
	VMCancelled VMState = "cancelled"
)

// Point kinds, as recorded in repository.Manifest.Kind and VMResult.Kind.
const (
	PointFull        = "full"
	PointIncremental = "incremental"
)

// Job is one run of Backup, RestoreInPlace or Rebuild. The Job returned by
// those methods is complete and no longer changes.
type Job struct {
	ID       string
	Kind     JobKind
	PlanID   string // the plan that asked for it, if any
	Manual   bool   // started by hand, not by a schedule
	State    JobState
	Started  time.Time
	Finished time.Time
	// VMs holds one result per VM, in the order of the request.
	VMs []VMResult
	// Err aggregates the VMs' errors (a *multierror.Error), or is nil.
	Err error

	created time.Time  // when the job was made: its history record's time
	seq     uint64     // the Service's count of jobs made, for the record's key
	run     *planRun   // the plan run that made the job, if any
	beat    *heartbeat // rewrites the job's record while it is pending or running
}

// VMResult is what a job did for one VM.
type VMResult struct {
	VMID   string
	VMName string
	State  VMState
	// PointID is the restore point written (backup) or read (restore).
	PointID string
	// Kind is "full" or "incremental" for a backup (a point with any full
	// disk is full), and Reason why (per disk where disks differ).
	Kind   string
	Reason string
	// Consistency is what the snapshot actually was; Note says why it
	// differs from what was asked.
	Consistency hypervisor.Consistency
	Note        string
	// BytesTotal is the disks' size; BytesRead what was read (from the
	// hypervisor on backup, from the repository on restore); BytesNew the
	// plaintext of chunks new to the repository; BytesStored what they
	// take in the bucket; BytesWritten what a restore wrote to disks.
	BytesTotal   int64
	BytesRead    int64
	BytesNew     int64
	BytesStored  int64
	BytesWritten int64
	Started      time.Time
	Duration     time.Duration
	// Retries is how many times the VM was tried again after a failure.
	Retries int
	// Err is why the VM failed or was cancelled (nil if it succeeded).
	Err error
	// Warnings are problems that did not fail the VM (a snapshot that
	// could not be released, a VM that could not be started after a
	// restore).
	Warnings []string
	// Restore is the restore's detailed result (restore jobs only).
	Restore *restore.Result
}

// EventType names an event.
type EventType string

// Event types, in the order a job emits them.
const (
	EventJobStarted  EventType = "job started"
	EventVMStarted   EventType = "vm started"
	EventProgress    EventType = "progress"
	EventVMFinished  EventType = "vm finished"
	EventJobFinished EventType = "job finished"
)

// Event is one step of a job, delivered to subscribers.
type Event struct {
	Type    EventType
	Time    time.Time
	JobID   string
	JobKind JobKind
	// VMID and VMName are set for VM events and progress.
	VMID   string
	VMName string
	// Disk is the disk in progress (progress events).
	Disk string
	// BytesDone of BytesTotal are the VM's bytes to read (backup) or to
	// restore, in progress events.
	BytesDone  int64
	BytesTotal int64
	// VM is the VM's result (vm finished).
	VM *VMResult
	// Job is the job (job started and job finished); at job started only
	// its id, kind and start are meaningful.
	Job *Job
}
