// Package backup is the engine's entry point: a [Service] that composes a
// Hypervisor, a Repository and a Scheduler, and runs backup and restore jobs,
// by request or by itself from backup plans.
//
// # Jobs
//
// Every call of [Service.Backup], [Service.RestoreInPlace] or
// [Service.Rebuild] is a job: it gets an id, runs to its end, and returns a
// [Job] with one [VMResult] per VM and an overall [JobState]: succeeded,
// partially failed (some VMs failed), failed (all failed) or cancelled (the
// context ended). The returned error aggregates the VMs' errors with
// go-multierror, so errors.Is finds each cause. A failed VM is retried
// Config.Retries times, Config.RetryDelay apart; a cancelled one is not.
// Up to Config.ParallelVMs VMs of a job run at once.
//
// # One VM's backup
//
//  1. Snapshot the VM with the consistency asked for (falling back to crash
//     consistency if the request allows it); record what was taken.
//  2. Find the VM's newest restore point and start a PointWriter based on
//     it, which keeps garbage collection off the chunks it reuses.
//  3. For each disk, decide incremental or full. Incremental needs all of:
//     a previous point that has the disk with a change token, the same size,
//     a disk that tracks changes, and a token the hypervisor still honours.
//     Otherwise the disk is backed up full, and the reason is recorded: "first
//     backup", "new disk", "forced full", "no change tracking", "size changed
//     ...", "token invalid: ...", "previous index unreadable: ...".
//  4. Incremental: the previous index is copied and only the chunks that the
//     changed extents touch are read again. Full: every chunk that holds an
//     allocated extent is read (holes are never read; a disk without extent
//     reporting is read whole). Either way only chunks that the repository
//     lacks are compressed and uploaded, so a full backup without change
//     tracking still stores only what changed.
//  5. Commit the restore point (indexes, then the manifest), or abort it on
//     any error or cancellation: a failed or cancelled backup leaves no
//     restore point. The snapshot is released on every path, with a context
//     that is not cancelled.
//
// # Pipeline
//
// Each disk is backed up by Config.Workers goroutines that take chunk slots
// in disk order from a shared cursor; each reads its chunk (only the
// allocated parts, into a pooled buffer), detects an all-zero chunk with a
// memory-speed comparison (zero chunks are never hashed nor stored), hashes
// it, and hands it to PointWriter.PutChunk, which compresses and uploads it
// unless the repository already has it. Reads of one worker overlap the
// hashing and compression of the others, so the pipeline is bound by CPU
// (hash + compress) or by the backends, not by latency. Buffers come from one
// pool per Service that holds at most Config.MaxInFlightBytes, so peak memory
// does not depend on disk size or on the number of VMs in parallel.
//
// # Progress
//
// [Service.Subscribe] registers a function that receives every [Event]:
// job started, VM started, progress (bytes done of total, about every
// percent), VM finished, job finished. Events are delivered synchronously
// and in order for each job, so the function must be quick. The Service
// also logs through Config.Logger.
//
// # Restore
//
// [Service.RestoreInPlace] and [Service.Rebuild] run package restore as
// jobs with the same events and results; see package restore for what they
// write and what they skip.
//
// # Plans
//
// Backup plans (package plan) live in Config.Plans, by default beside the
// restore points in the repository's bucket. [Service.PutPlan] validates and
// stores a plan; [Service.StartPlans] hands every plan to the Scheduler
// (by default a schedule.Local on Config.Clock), which fires its runs. A run:
//
//  1. reads the plan as stored now (a deleted plan's run is recorded as
//     skipped);
//  2. resolves its VMs: the listed ids plus the VMs whose labels match a
//     selector (a listed VM that is gone fails the run for that VM);
//  3. backs them up as one job with the plan's consistency, codec and limits
//     (full if the Scheduler says the run is full);
//  4. applies the plan's retention to the points of the VMs it backed up,
//     and starts garbage collection at most every Config.GCInterval;
//  5. with Compression.RecompressTo, queues the chunks the run added for
//     rewriting into that codec when the window closes: backups in the
//     window run at a fast codec's speed (s2), and the repository ends up
//     the strong codec's size (repository.Recompress).
//
// A run that the window's close stops (overrun policy stop) is cancelled
// like any job: its snapshots are released, no restore point is written,
// and retention does not run. At most Config.MaxBackupJobs backup jobs and
// Config.MaxRestoreJobs restore jobs run at once, scheduled or not; the
// others wait in state pending.
//
// # Job history
//
// Every job, and every scheduled run that was not made (skipped outside
// the window, while the previous run was busy, while paused, or missed
// while the Service was down), is a [JobRecord] in the bucket, pruned to
// Config.HistoryLimit per plan; see [Service.History] and
// [Service.PlanStatus]. After a restart, StartPlans reads each plan's last
// run from the history, so the Scheduler reports the runs missed meanwhile
// and makes one catch-up run. A running job rewrites its record every
// Config.JobHeartbeat, so when its process or its host dies, the next
// Service to read the record, on any host, marks the job failed
// ("interrupted") instead of leaving it running forever.
package backup
