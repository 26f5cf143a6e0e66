package backup_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gocloud.dev/blob"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
	"github.com/vmbackup/vmbackup/schedule"
)

// monday is 2027-03-08 00:00 UTC, a Monday.
var monday = time.Date(2027, 3, 8, 0, 0, 0, 0, time.UTC)

var everyDay = []schedule.Weekday{0, 1, 2, 3, 4, 5, 6}

// addLabelledVM adds a VM with one 4 MiB disk of test data.
func (e *env) addLabelledVM(t *testing.T, name string, labels map[string]string, seed int64) hypervisor.VM {
	t.Helper()
	vm, err := e.hv.AddVM(hypervisor.VM{Name: name, CPUs: 1, MemoryB: 1 << 30, Labels: labels,
		Disks: []hypervisor.DiskInfo{{Name: "root", Size: 4 << 20, Bus: "virtio", BootOrder: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Generate(context.Background(), diskWriterAt{e.hv, vm.ID, vm.Disks[0].ID}, vm.Disks[0].Size, seed); err != nil {
		t.Fatal(err)
	}
	return vm
}

func (e *env) waitIdle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.svc.WaitIdle(ctx); err != nil {
		t.Fatalf("WaitIdle: %v", err)
	}
}

// history returns the plan's records, newest first, each as line makes it.
func (e *env) history(t *testing.T, planID string, line func(backup.JobRecord) string) []string {
	t.Helper()
	recs, err := e.svc.History(context.Background(), planID, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, r := range recs {
		lines = append(lines, line(r))
	}
	return lines
}

// eventually polls cond until it holds, for states no event announces
// (a goroutine blocked inside an injected fault).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// startPlan stores p and starts the Service's plans; the Service is closed
// when the test ends.
func (e *env) startPlan(t *testing.T, p plan.Plan) {
	t.Helper()
	if _, err := e.svc.PutPlan(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.StartPlans(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := e.svc
	t.Cleanup(func() { svc.Close(context.Background()) })
}

// hourly is a plan of the VMs vmIDs every hour, with no window.
func hourly(vmIDs ...string) plan.Plan {
	p := nightly(vmIDs...)
	p.Objects.Selectors = nil
	p.Incremental = schedule.Schedule{Kind: schedule.KindHours, Every: 1}
	p.Full, p.Window, p.OutsideWindow, p.Overrun = nil, nil, "", ""
	return p
}

// nightly is a plan every 2 hours, full at 00:00, inside 20:00–06:00 with
// runs outside skipped, keeping the last 3 points and the newest of 2 days.
func nightly(vmIDs ...string) plan.Plan {
	return plan.Plan{
		ID:            "nightly",
		Name:          "Nightly",
		Objects:       plan.Objects{VMIDs: vmIDs, Selectors: []plan.Selector{{"tier": "gold"}}},
		Repository:    "mem://",
		Incremental:   schedule.Schedule{Kind: schedule.KindHours, Every: 2},
		Full:          &schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"00:00"}},
		Window:        &schedule.Window{Ranges: []schedule.Range{{Weekdays: everyDay, Start: "20:00", End: "06:00"}}},
		OutsideWindow: schedule.OutsideSkip,
		Overrun:       schedule.OverrunStop,
		Retention:     plan.Retention{KeepLast: 3, Daily: 2},
		Compression:   plan.Compression{Enabled: true, Codec: "s2"},
		Limits:        plan.Limits{ParallelVMs: 2},
	}
}

// TestPlanOverDays runs a plan on a fake clock from Monday 11:00 to
// Thursday 11:00 while the guests write between runs, and checks exactly
// which restore points exist afterwards, what the history recorded, the
// plan's status, and that the newest point restores the disk byte for byte.
func TestPlanOverDays(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(11 * time.Hour))
	e := newEnv(t, "file", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	b := e.addLabelledVM(t, "b", map[string]string{"tier": "gold"}, 2)
	e.addLabelledVM(t, "c", map[string]string{"tier": "bronze"}, 3) // in no plan
	e.startPlan(t, nightly(a.ID))

	lastWrite := monday.AddDate(0, 0, 3).Add(3 * time.Hour) // Thu 03:00
	for end := monday.AddDate(0, 0, 3).Add(11 * time.Hour); clock.Now().Before(end); {
		clock.Advance(time.Hour)
		e.waitIdle(t)
		if now := clock.Now(); now.Hour()%2 == 1 && !now.After(lastWrite) {
			e.mutate(t, a, 0.02, now.Unix(), false)
			e.mutate(t, b, 0.02, now.Unix()+1, true)
		}
	}

	var got []string
	for _, vm := range []hypervisor.VM{a, b} {
		for _, m := range e.points(t, vm.ID) {
			got = append(got, fmt.Sprintf("%s %s %s manual=%v", vm.Name, m.Created.Format("Mon 15:04"), m.Kind, m.Manual))
		}
	}
	want := []string{
		"a Thu 04:00 incremental manual=false", "a Thu 02:00 incremental manual=false", "a Thu 00:00 full manual=false", "a Wed 22:00 incremental manual=false",
		"b Thu 04:00 incremental manual=false", "b Thu 02:00 incremental manual=false", "b Thu 00:00 full manual=false", "b Wed 22:00 incremental manual=false",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("restore points (-want +got):\n%s", diff)
	}
	if ps, _ := e.repo.ListPoints(ctx, repository.Filter{}); len(ps) != len(want) {
		t.Errorf("%d points in the repository, want %d (vm c is in no plan)", len(ps), len(want))
	}
	if n := e.hv.OpenSnapshots(); n != 0 {
		t.Errorf("%d snapshots left open", n)
	}

	// History: 15 runs inside the window (5 a night), 21 due times outside.
	recs, err := e.svc.History(ctx, "nightly", 0)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]int{}
	for _, r := range recs {
		k := string(r.State)
		if r.Full {
			k += " full"
		}
		if r.State == backup.JobSkipped {
			k += ": " + r.Reason
		}
		states[k]++
		if r.State == backup.JobSucceeded {
			if r.Retention == nil || len(r.Retention.Errors) > 0 {
				t.Errorf("run due %s: retention %+v, want applied without errors", r.Due, r.Retention)
			}
			if len(r.VMs) != 2 || r.VMs[0].VMID != a.ID || r.VMs[1].VMID != b.ID || r.VMs[0].PointID == "" {
				t.Errorf("run due %s: VMs %+v, want a then b, each with a point", r.Due, r.VMs)
			}
		}
	}
	wantStates := map[string]int{
		"succeeded":      12,
		"succeeded full": 3,
		"skipped: " + string(schedule.ReasonOutsideWindow): 21,
	}
	if diff := cmp.Diff(wantStates, states); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if recs[0].Due != monday.AddDate(0, 0, 3).Add(10*time.Hour) {
		t.Errorf("newest record is due %s, want Thu 10:00", recs[0].Due)
	}

	st, err := e.svc.PlanStatus(ctx, "nightly")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Scheduled || st.Running || st.Next != monday.AddDate(0, 0, 3).Add(12*time.Hour) {
		t.Errorf("status: scheduled %v running %v next %s, want scheduled, idle, next Thu 12:00", st.Scheduled, st.Running, st.Next)
	}
	if st.LastRun == nil || st.LastRun.Due != monday.AddDate(0, 0, 3).Add(4*time.Hour) || st.LastRun.State != backup.JobSucceeded {
		t.Errorf("status: last run %+v, want the one due Thu 04:00, succeeded", st.LastRun)
	}
	if st.LastSkip == nil || st.LastSkip.Due != monday.AddDate(0, 0, 3).Add(10*time.Hour) {
		t.Errorf("status: last skip %+v, want the one due Thu 10:00", st.LastSkip)
	}
	if st.Points != 8 || st.VMs != 2 || st.LogicalBytes != 8*(4<<20) || st.StoredBytes <= 0 || st.CompressionRatio <= 1 {
		t.Errorf("status: %d points of %d VMs, %d logical, %d stored, ratio %.2f", st.Points, st.VMs, st.LogicalBytes, st.StoredBytes, st.CompressionRatio)
	}

	// The newest point of a holds what a's disk held at Thu 04:00, which
	// is what it holds now.
	newest := e.points(t, a.ID)[0]
	_, disks := e.rebuilt(t, newest, "a-restored")
	sameDisks(t, "rebuilt newest point of a", disks, e.contents(t, a))
}

// TestOverrunStop hangs a run after its snapshot and checks that the
// window's close cancels it leaving no restore point, no open snapshot and
// no lease, and that the history says why.
func TestOverrunStop(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(21 * time.Hour))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := nightly(a.ID)
	p.Objects.Selectors = nil
	p.Incremental = schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"22:30"}}
	p.Full = nil
	p.Window.Ranges[0].Start, p.Window.Ranges[0].End = "22:00", "23:00"
	e.startPlan(t, p)

	e.hv.Inject(fake.Fault{Op: fake.OpOpenDisk, VMID: a.ID, Delay: 100 * time.Hour})
	clock.Advance(90 * time.Minute) // 22:30: the run starts and hangs in OpenDisk
	eventually(t, "the run to reach the hanging OpenDisk", func() bool { return len(e.hv.PendingFaults()) == 0 })
	if n := e.hv.OpenSnapshots(); n != 1 {
		t.Fatalf("%d snapshots open during the run, want 1", n)
	}
	clock.Advance(30 * time.Minute) // 23:00: the window closes
	e.waitIdle(t)

	if ps := e.points(t, a.ID); len(ps) != 0 {
		t.Errorf("%d restore points after the stopped run, want none", len(ps))
	}
	if n := e.hv.OpenSnapshots(); n != 0 {
		t.Errorf("%d snapshots left open", n)
	}
	if keys := listKeys(t, e.repo.Bucket(), "leases/"); len(keys) != 0 {
		t.Errorf("leases left: %v", keys)
	}
	recs, err := e.svc.History(ctx, p.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].State != backup.JobCancelled || !strings.Contains(recs[0].Reason, "window closed") || recs[0].VMs[0].State != backup.VMCancelled {
		t.Errorf("history %+v, want one cancelled run saying the window closed", recs)
	}
}

func listKeys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		o, err := it.Next(context.Background())
		if errors.Is(err, io.EOF) {
			return keys
		}
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, o.Key)
	}
}

// TestMissedRunsCatchUp stops the Service for a few hours and checks that
// a new one reports the missed runs and makes one catch-up run.
func TestMissedRunsCatchUp(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(10*time.Hour + 30*time.Minute))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := hourly(a.ID)
	e.startPlan(t, p)
	clock.Advance(time.Hour) // 11:00 runs, 11:30
	e.waitIdle(t)
	if err := e.svc.Close(ctx); err != nil {
		t.Fatal(err)
	}

	clock.Advance(4 * time.Hour) // 15:30: 12:00 to 15:00 passed with no Service
	svc, err := backup.New(backup.Config{Hypervisor: e.hv, Repository: e.repo, Clock: clock, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	if err := svc.StartPlans(ctx); err != nil {
		t.Fatal(err)
	}
	defer svc.Close(ctx)
	e.waitIdle(t)

	got := e.history(t, p.ID, func(r backup.JobRecord) string {
		return fmt.Sprintf("%s due %s catch-up=%v %s", r.State, r.Due.Format("15:04"), r.CatchUp, r.Reason)
	})
	want := []string{
		"succeeded due 15:00 catch-up=true ",
		"skipped due 15:00 catch-up=false missed while the service was not running: 4 runs due from 2027-03-08T12:00:00Z to 2027-03-08T15:00:00Z",
		"succeeded due 11:00 catch-up=false ",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if ps := e.points(t, a.ID); len(ps) != 2 {
		t.Errorf("%d points, want 2 (11:00 and the catch-up)", len(ps))
	}
}

// TestPlanLifecycle covers what an embedder does by hand: invalid and
// conflicting writes, manual runs, retention dry runs, removing a VM and
// deleting plans with and without their points.
func TestPlanLifecycle(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(9 * time.Hour))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	b := e.addLabelledVM(t, "b", map[string]string{"tier": "gold"}, 2)

	bad := nightly()
	bad.Objects.Selectors = nil
	bad.Retention = plan.Retention{}
	_, err := e.svc.PutPlan(ctx, bad)
	var fields []string
	for _, fe := range plan.Problems(err) {
		fields = append(fields, fe.Field)
	}
	if !errors.Is(err, plan.ErrInvalid) || !slices.Contains(fields, "objects") || !slices.Contains(fields, "retention") {
		t.Errorf("PutPlan(no objects, no retention) = %v (fields %v), want ErrInvalid naming objects and retention", err, fields)
	}

	p := nightly(a.ID)
	p.Retention = plan.Retention{KeepLast: 1}
	p.Consistency = plan.Consistency{Mode: plan.ApplicationConsistent, FallbackToCrash: true} // the fake's guests cannot quiesce
	p.Compression = plan.Compression{Enabled: false}
	stored, err := e.svc.PutPlan(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.PutPlan(ctx, p); !errors.Is(err, plan.ErrConflict) {
		t.Errorf("PutPlan of a stale version = %v, want ErrConflict", err)
	}

	for i, full := range []bool{true, false} {
		clock.Advance(time.Hour)
		e.mutate(t, a, 0.05, int64(i), false)
		job, err := e.svc.RunPlan(ctx, "nightly", full)
		if err != nil {
			t.Fatal(err)
		}
		wantKind := map[bool]string{true: backup.PointFull, false: backup.PointIncremental}[full]
		if job.State != backup.JobSucceeded || !job.Manual || len(job.VMs) != 2 || job.VMs[0].Kind != wantKind {
			t.Fatalf("RunPlan(full=%v): %+v", full, job)
		}
		for _, r := range job.VMs {
			if r.Consistency != hypervisor.CrashConsistent || r.Note == "" {
				t.Errorf("vm %s: consistency %q note %q, want a recorded fallback to crash", r.VMID, r.Consistency, r.Note)
			}
			if r.BytesStored < r.BytesNew {
				t.Errorf("vm %s: %d bytes stored of %d new, but the plan turns compression off", r.VMID, r.BytesStored, r.BytesNew)
			}
		}
	}
	// Manual points are kept by KeepLast 1; with ForgetManual a dry run
	// names the older point of each VM and deletes nothing.
	stored.Retention.ForgetManual = true
	if stored, err = e.svc.PutPlan(ctx, stored); err != nil {
		t.Fatal(err)
	}
	older := []string{e.points(t, a.ID)[1].ID, e.points(t, b.ID)[1].ID}
	rep, err := e.svc.ApplyRetention(ctx, "nightly", true)
	if err != nil {
		t.Fatal(err)
	}
	var forgotten []string
	for _, d := range rep.Forgotten {
		forgotten = append(forgotten, d.ID)
	}
	if !rep.DryRun || !cmp.Equal(sorted(forgotten), sorted(older)) || len(rep.Kept) != 2 {
		t.Errorf("dry run: %+v, want the older point of each VM forgotten", rep)
	}
	if n := len(e.points(t, a.ID)) + len(e.points(t, b.ID)); n != 4 {
		t.Errorf("%d points after a dry run, want all 4", n)
	}
	if rep, err = e.svc.ApplyRetention(ctx, "nightly", false); err != nil || len(rep.Forgotten) != 2 {
		t.Fatalf("ApplyRetention = %+v, %v", rep, err)
	}
	if n := len(e.points(t, a.ID)) + len(e.points(t, b.ID)); n != 2 {
		t.Errorf("%d points after retention, want 2", n)
	}

	// Pausing records due times as skipped; resuming runs again.
	if err := e.svc.StartPlans(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.svc.Close(ctx)
	if _, err := e.svc.SetPlanState(ctx, "nightly", plan.Paused); err != nil {
		t.Fatal(err)
	}
	clock.Advance(11*time.Hour + 30*time.Minute) // 11:00 to 22:30: 20:00 and 22:00 are due inside the window
	e.waitIdle(t)
	if st, err := e.svc.PlanStatus(ctx, "nightly"); err != nil || !st.Paused || st.LastSkip == nil || st.LastSkip.Reason != string(schedule.ReasonPaused) {
		t.Errorf("paused plan: status %+v, %v; want paused with its last due time skipped as paused", st, err)
	}
	if stored, err = e.svc.SetPlanState(ctx, "nightly", plan.Enabled); err != nil {
		t.Fatal(err)
	}
	clock.Advance(90 * time.Minute) // 00:00 runs
	e.waitIdle(t)
	if st, err := e.svc.PlanStatus(ctx, "nightly"); err != nil || st.Paused || st.LastRun == nil || st.LastRun.Due != monday.Add(24*time.Hour) || !st.LastRun.Full {
		t.Errorf("resumed plan: status %+v, %v; want the 00:00 full run made", st, err)
	}

	if _, err := e.svc.RemoveVMFromPlan(ctx, "nightly", b.ID, false); err == nil || !strings.Contains(err.Error(), "tier") {
		t.Errorf("RemoveVMFromPlan of a VM matched by a selector = %v, want an error naming the selector", err)
	}
	after, err := e.svc.RemoveVMFromPlan(ctx, "nightly", a.ID, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Objects.VMIDs) != 0 || len(e.points(t, a.ID)) != 0 || len(e.points(t, b.ID)) != 1 {
		t.Errorf("after RemoveVMFromPlan(a, delete points): vmIDs %v, %d points of a, %d of b; want none, 0, 1", after.Objects.VMIDs, len(e.points(t, a.ID)), len(e.points(t, b.ID)))
	}

	if err := e.svc.DeletePlan(ctx, "nightly", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Plan(ctx, "nightly"); !errors.Is(err, plan.ErrNotFound) {
		t.Errorf("Plan after DeletePlan = %v, want ErrNotFound", err)
	}
	if n := len(e.points(t, b.ID)); n != 1 {
		t.Errorf("DeletePlan(keep points) left %d points of b, want 1", n)
	}

	p2 := nightly(a.ID)
	p2.ID = "second"
	if _, err := e.svc.PutPlan(ctx, p2); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RunPlan(ctx, "second", false); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.DeletePlan(ctx, "second", true); err != nil {
		t.Fatal(err)
	}
	ps, err := e.repo.ListPoints(ctx, repository.Filter{PlanID: "second"})
	if err != nil || len(ps) != 0 {
		t.Errorf("DeletePlan(delete points) left %d points, err %v", len(ps), err)
	}
	if n := len(e.points(t, b.ID)); n != 1 {
		t.Errorf("deleting plan second touched plan nightly's points: %d of b, want 1", n)
	}
	if err := e.svc.DeletePlan(ctx, "second", true); !errors.Is(err, plan.ErrNotFound) {
		t.Errorf("DeletePlan twice = %v, want ErrNotFound", err)
	}
}

func sorted(s []string) []string { return slices.Sorted(slices.Values(s)) }

// TestHistoryPruned checks that only the newest HistoryLimit records of a
// plan are kept.
func TestHistoryPruned(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday)
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock, HistoryLimit: 3})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := nightly(a.ID)
	p.Objects.Selectors = nil
	if _, err := e.svc.PutPlan(ctx, p); err != nil {
		t.Fatal(err)
	}
	var jobs []string
	for range 5 {
		clock.Advance(time.Minute)
		job, err := e.svc.RunPlan(ctx, p.ID, false)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, job.ID)
	}
	got := e.history(t, p.ID, func(r backup.JobRecord) string { return r.ID })
	if want := []string{jobs[4], jobs[3], jobs[2]}; !cmp.Equal(want, got) {
		t.Errorf("history %v, want the newest 3 jobs %v", got, want)
	}
	if keys := listKeys(t, e.repo.Bucket(), "history/plan/"+p.ID+"/"); len(keys) != 3 {
		t.Errorf("%d history objects, want 3: %v", len(keys), keys)
	}
}

// TestMaxJobs checks that a second backup (restore) job waits, pending,
// while the only backup (restore) slot is taken, and runs once it is free.
func TestMaxJobs(t *testing.T) {
	for _, kind := range []string{"backup", "restore"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, "mem", nil, backup.Config{MaxBackupJobs: 1, MaxRestoreJobs: 1})
			a := e.addLabelledVM(t, "a", nil, 1)
			b := e.addLabelledVM(t, "b", nil, 2)
			run := func(ctx context.Context, vm hypervisor.VM) (*backup.Job, error) {
				return e.svc.Backup(ctx, backup.Request{VMIDs: []string{vm.ID}})
			}
			hang := fake.Fault{Op: fake.OpSnapshot, VMID: a.ID, Delay: 100 * time.Hour}
			if kind == "restore" {
				points := map[string]string{}
				for _, vm := range []hypervisor.VM{a, b} {
					points[vm.ID] = e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0].PointID
					if err := e.hv.PowerOff(ctx, vm.ID); err != nil {
						t.Fatal(err)
					}
				}
				run = func(ctx context.Context, vm hypervisor.VM) (*backup.Job, error) {
					return e.svc.RestoreInPlace(ctx, points[vm.ID], restore.InPlaceOptions{})
				}
				hang.Op = fake.OpOpenDiskForWrite
			}
			var order []string
			unsub := e.svc.Subscribe(func(ev backup.Event) {
				if ev.Type == backup.EventJobStarted || ev.Type == backup.EventJobFinished {
					order = append(order, fmt.Sprintf("%s %s", ev.Type, ev.Job.ID))
				}
			})
			defer unsub()

			e.hv.Inject(hang)
			ctxA, cancelA := context.WithCancel(ctx)
			doneA := make(chan *backup.Job)
			go func() {
				job, _ := run(ctxA, a)
				doneA <- job
			}()
			eventually(t, "job a to hang", func() bool { return len(e.hv.PendingFaults()) == 0 })
			doneB := make(chan *backup.Job)
			go func() {
				job, _ := run(ctx, b)
				doneB <- job
			}()
			eventually(t, "job b to be recorded pending", func() bool {
				recs, err := e.svc.History(ctx, "", 0)
				return err == nil && slices.ContainsFunc(recs, func(r backup.JobRecord) bool {
					return r.State == backup.JobPending && r.VMs[0].VMID == b.ID
				})
			})
			cancelA()
			if job := <-doneA; job.State != backup.JobCancelled {
				t.Errorf("job a: %s, want cancelled", job.State)
			}
			if job := <-doneB; job.State != backup.JobSucceeded {
				t.Errorf("job b: %s, want succeeded", job.State)
			}
			if len(order) != 4 || !strings.HasPrefix(order[1], "job finished") {
				t.Errorf("events %q: want job b to start only after job a finished", order)
			}
			recs, err := e.svc.History(ctx, "", 2)
			if err != nil || len(recs) != 2 || recs[0].State != backup.JobSucceeded || recs[1].State != backup.JobCancelled {
				t.Errorf("history of jobs without a plan: %+v, %v", recs, err)
			}
		})
	}
}

// TestRestoreJobsRecorded checks that restores enter the history of jobs
// without a plan.
func TestRestoreJobsRecorded(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", nil, backup.Config{})
	a := e.addLabelledVM(t, "a", nil, 1)
	job := e.backup(t, backup.Request{VMIDs: []string{a.ID}})
	if err := e.hv.PowerOff(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RestoreInPlace(ctx, job.VMs[0].PointID, restore.InPlaceOptions{}); err != nil {
		t.Fatal(err)
	}
	recs, err := e.svc.History(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, r := range recs {
		kinds = append(kinds, string(r.Kind)+" "+string(r.State))
	}
	if want := []string{"restore-in-place succeeded", "backup succeeded"}; !cmp.Equal(want, kinds) {
		t.Errorf("history %v, want %v", kinds, want)
	}
}

// TestOutsideWindowWaits checks that a run due before its window opens
// waits for it and that its record says so.
func TestOutsideWindowWaits(t *testing.T) {
	clock := schedule.NewFakeClock(monday.Add(20 * time.Hour))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := nightly(a.ID)
	p.Objects.Selectors = nil
	p.Incremental = schedule.Schedule{Kind: schedule.KindHours, Every: 1}
	p.Full = nil
	p.Window.Ranges[0].Start, p.Window.Ranges[0].End = "22:00", "23:00"
	p.OutsideWindow = schedule.OutsideWait
	e.startPlan(t, p)
	clock.Advance(time.Hour) // 21:00 is due and waits
	e.waitIdle(t)
	if ps := e.points(t, a.ID); len(ps) != 0 {
		t.Fatalf("%d points before the window opened", len(ps))
	}
	clock.Advance(time.Hour) // 22:00: the window opens
	e.waitIdle(t)
	got := e.history(t, p.ID, func(r backup.JobRecord) string {
		return fmt.Sprintf("%s due %s started %s: %s", r.State, r.Due.Format("15:04"), r.Started.Format("15:04"), r.Reason)
	})
	slices.Sort(got)
	want := []string{
		"skipped due 22:00 started 00:00: " + string(schedule.ReasonBusy),
		"succeeded due 21:00 started 22:00: due outside the backup window: waited for it to open at 2027-03-08T22:00:00Z",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	if ps := e.points(t, a.ID); len(ps) != 1 {
		t.Errorf("%d points, want 1", len(ps))
	}
}

// TestPlanChangedElsewhere changes a started plan through another Store
// (as another process would) and checks that the Service follows the new
// timing and state from its next run on.
func TestPlanChangedElsewhere(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(10*time.Hour + 30*time.Minute))
	e := newEnv(t, "file", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := hourly(a.ID)
	e.startPlan(t, p)
	other := plan.NewBlobStore(e.repo.Bucket(), &plan.BlobStoreOptions{LocalDir: e.repo.LocalDir()})
	change := func(f func(*plan.Plan)) {
		t.Helper()
		q, err := other.Get(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		f(&q)
		if _, err := other.Put(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	clock.Advance(time.Hour) // 11:00 runs
	e.waitIdle(t)
	change(func(q *plan.Plan) { q.Incremental.Every = 2 })
	clock.Advance(time.Hour) // 12:00 runs on the old timing and picks up the new one
	e.waitIdle(t)
	clock.Advance(time.Hour) // 13:00 is no longer due
	e.waitIdle(t)
	change(func(q *plan.Plan) { q.State = plan.Paused })
	clock.Advance(90 * time.Minute) // 14:00 finds the plan paused
	e.waitIdle(t)
	clock.Advance(2 * time.Hour) // 16:00 is skipped as paused
	e.waitIdle(t)

	got := e.history(t, p.ID, func(r backup.JobRecord) string {
		return fmt.Sprintf("%s %s %s", r.Due.Format("15:04"), r.State, r.Reason)
	})
	slices.Reverse(got)
	want := []string{
		"11:00 succeeded ",
		"12:00 succeeded ",
		"14:00 skipped the plan is paused",
		"16:00 skipped " + string(schedule.ReasonPaused),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
}

// chunkTags counts the repository's chunks by codec tag (0 raw, 1 zstd, 2 s2).
func (e *env) chunkTags(t *testing.T) map[byte]int {
	t.Helper()
	tags := map[byte]int{}
	for _, k := range listKeys(t, e.repo.Bucket(), "chunks/") {
		data, err := e.repo.Bucket().ReadAll(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		tags[data[0]]++
	}
	return tags
}

// TestRecompressAfterWindow stores a window's backups with s2 and checks
// that the window's close rewrites them into zstd, smaller, with every
// point still restoring byte for byte; and that a plan without a window
// recompresses right after its run.
func TestRecompressAfterWindow(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(21*time.Hour + 30*time.Minute))
	e := newEnv(t, "file", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := hourly(a.ID)
	p.Window = &schedule.Window{Ranges: []schedule.Range{{Weekdays: everyDay, Start: "22:00", End: "01:00"}}}
	p.OutsideWindow = schedule.OutsideSkip
	p.Compression = plan.Compression{Enabled: true, Codec: "s2", RecompressTo: "zstd"}
	p.Retention = plan.Retention{KeepLast: 10}
	e.startPlan(t, p)

	for i := range 3 { // 22:00, 23:00 and 00:00 run inside the window
		clock.Advance(time.Hour)
		e.waitIdle(t)
		if i < 2 {
			e.mutate(t, a, 0.05, int64(i), false)
		}
	}
	before := e.chunkTags(t)
	if before[2] == 0 {
		t.Fatalf("chunk tags %v inside the window: want chunks stored with s2", before)
	}
	want := e.contents(t, a)
	clock.Advance(time.Hour) // 01:00: the window closes
	e.waitIdle(t)

	if after := e.chunkTags(t); after[2] != 0 || after[1] == 0 {
		t.Errorf("chunk tags %v after the window, were %v: want every s2 chunk in zstd", after, before)
	}
	recs, err := e.svc.History(ctx, p.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(recs, func(r backup.JobRecord) bool { return r.Kind == backup.KindRecompress })
	if i < 0 {
		t.Fatalf("no recompress job in the history: %+v", recs)
	}
	if r := recs[i]; r.State != backup.JobSucceeded || r.Recompress == nil ||
		r.Recompress.Rewritten != before[2] || r.Recompress.BytesAfter >= r.Recompress.BytesBefore {
		t.Errorf("recompress job %+v (report %+v), want succeeded, the %d s2 chunks rewritten smaller", r, r.Recompress, before[2])
	}
	ps := e.points(t, a.ID)
	if len(ps) != 3 {
		t.Fatalf("%d points, want 3", len(ps))
	}
	_, disks := e.rebuilt(t, ps[0], "a-restored")
	sameDisks(t, "newest point after recompression", disks, want)

	// Without a window, a run recompresses what it stored.
	e2 := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	b := e2.addLabelledVM(t, "b", nil, 2)
	q := hourly(b.ID)
	q.Compression = p.Compression
	if _, err := e2.svc.PutPlan(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := e2.svc.RunPlan(ctx, q.ID, true); err != nil {
		t.Fatal(err)
	}
	recs, err = e2.svc.History(ctx, q.ID, 1)
	if err != nil {
		t.Fatal(err)
	}
	if tags := e2.chunkTags(t); tags[2] != 0 || recs[0].Recompress == nil || recs[0].Recompress.Rewritten == 0 {
		t.Errorf("run without a window: chunk tags %v, record's recompress %+v; want no s2 chunk left", tags, recs[0].Recompress)
	}
}

// TestInterruptedJobsSettled writes the records a crashed process would
// leave (running, by a process that is gone) beside ones of a live process
// and of other hosts, and checks that StartPlans marks failed those of the
// ended process and of the host whose heartbeat stopped, that a record
// whose heartbeat is recent is settled once it goes stale, and that the
// failed run's due time still counts as the last run.
func TestInterruptedJobsSettled(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(12*time.Hour + 30*time.Minute))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock})
	a := e.addLabelledVM(t, "a", nil, 1)
	p := hourly(a.ID)
	if _, err := e.svc.PutPlan(ctx, p); err != nil {
		t.Fatal(err)
	}
	ended := exec.Command("true")
	if err := ended.Run(); err != nil {
		t.Skipf("no process to outlive: %v", err)
	}
	host, _ := os.Hostname()
	now := clock.Now()
	for i, r := range []struct {
		id, host string
		pid      int
		updated  time.Time // with a heartbeat of a minute, if set
	}{
		{"job-live", host, os.Getppid(), time.Time{}},
		{"job-elsewhere", "other-host", ended.ProcessState.Pid(), time.Time{}},
		{"job-beating", "host-b", 4242, now.Add(-2 * time.Minute)},
		{"job-stale", "host-c", 4343, now.Add(-6 * time.Minute)},
		{"job-crashed", host, ended.ProcessState.Pid(), time.Time{}},
	} {
		at := monday.Add(time.Duration(8+i) * time.Hour)
		rec := backup.JobRecord{ID: r.id, Kind: backup.KindBackup, PlanID: p.ID, State: backup.JobRunning, Due: at, Created: at, Started: at,
			VMs: []backup.VMRecord{{VMID: a.ID, State: backup.VMRunning}}, Host: r.host, PID: r.pid}
		if !r.updated.IsZero() {
			rec.Updated, rec.Heartbeat = r.updated, time.Minute
		}
		data, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("history/plan/%s/%019d-%016x-%s.run.json", p.ID, math.MaxInt64-at.UnixNano(), uint64(math.MaxUint64), r.id)
		if err := e.repo.Bucket().WriteAll(ctx, key, data, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.svc.StartPlans(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.svc.Close(ctx)
	e.waitIdle(t)
	got := e.history(t, p.ID, func(r backup.JobRecord) string {
		return fmt.Sprintf("%s due %s %s %s", r.ID, r.Due.Format("15:04"), r.State, r.Reason)
	})
	want := []string{
		fmt.Sprintf("job-crashed due 12:00 failed interrupted: process %d on %s ended before the job did", ended.ProcessState.Pid(), host),
		"job-stale due 11:00 failed interrupted: process 4343 on host-c stopped updating the job at 2027-03-08T12:24:00Z",
		"job-beating due 10:00 running ",
		"job-elsewhere due 09:00 running ",
		"job-live due 08:00 running ",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history (-want +got):\n%s", diff)
	}
	// host-b's heartbeat stops too: reading the history settles it.
	clock.Advance(4 * time.Minute)
	got = e.history(t, p.ID, func(r backup.JobRecord) string { return r.ID + " " + string(r.State) })
	if want := []string{"job-crashed failed", "job-stale failed", "job-beating failed", "job-elsewhere running", "job-live running"}; !slices.Equal(got, want) {
		t.Errorf("history after host-b's heartbeat stopped: %q, want %q", got, want)
	}
}

// TestJobHeartbeat: while a job runs, its record is rewritten every
// JobHeartbeat with the time, so other hosts can tell it is alive; once it
// ends, no heartbeat overwrites its final record.
func TestJobHeartbeat(t *testing.T) {
	ctx := context.Background()
	clock := schedule.NewFakeClock(monday.Add(12 * time.Hour))
	e := newEnv(t, "mem", nil, backup.Config{Clock: clock, JobHeartbeat: time.Minute})
	a := e.addLabelledVM(t, "a", nil, 1)
	timers := clock.Timers()
	e.hv.Inject(fake.Fault{Op: fake.OpSnapshot, Delay: time.Hour}) // until the job is cancelled
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := e.svc.Backup(jctx, backup.Request{VMIDs: []string{a.ID}, Manual: true})
		done <- err
	}()
	newest := func() backup.JobRecord {
		t.Helper()
		recs, err := e.svc.History(ctx, "", 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1 {
			t.Fatalf("%d records, want 1", len(recs))
		}
		return recs[0]
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		if recs, _ := e.svc.History(ctx, "", 1); len(recs) == 1 && recs[0].State == backup.JobRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never ran")
		}
	}
	start := clock.Now()
	if r := newest(); !r.Updated.Equal(start) || r.Heartbeat != time.Minute {
		t.Errorf("running record: updated %v, heartbeat %v; want %v, 1m", r.Updated, r.Heartbeat, start)
	}
	for i := 1; i <= 3; i++ {
		clock.Advance(time.Minute)
		if r := newest(); r.State != backup.JobRunning || !r.Updated.Equal(clock.Now()) {
			t.Errorf("after %d heartbeats: %s, updated %v; want running, updated %v", i, r.State, r.Updated, clock.Now())
		}
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("cancelled backup succeeded")
	}
	final := newest()
	clock.Advance(10 * time.Minute)
	if r := newest(); r.State != backup.JobCancelled || !r.Updated.Equal(final.Updated) {
		t.Errorf("record after the job ended and 10 heartbeats: %s, updated %v; want cancelled, updated %v", r.State, r.Updated, final.Updated)
	}
	if n := clock.Timers(); n != timers {
		t.Errorf("%d timers on the clock after the job, want %d: the heartbeat was not stopped", n, timers)
	}
}
