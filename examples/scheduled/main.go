// Command scheduled runs a backup plan by itself for a simulated week: every
// 15 minutes inside a nightly window that crosses midnight, a full backup
// each night, the guests writing between runs, and the plan's retention
// applied after every run. The Service's scheduler runs on a fake clock, so
// the week passes in seconds; it prints each run, each skip (consecutive
// skips for the same reason on one line; -v prints them one by one) and
// each retention decision, then the plan's status and the points it kept.
//
//	go run ./examples/scheduled [-days 7] [-size BYTES] [-repo URL] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/demo"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/plan"
	"github.com/vmbackup/vmbackup/schedule"
)

var (
	repoURL = flag.String("repo", "", "repository URL; empty: a temporary file:// repository")
	size    = flag.Int64("size", 16<<20, "disk size in bytes of each VM")
	days    = flag.Int("days", 7, "simulated days")
	verbose = flag.Bool("v", false, "print every skipped run on its own line")
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

// start is a Monday noon in the plan's zone.
var start = time.Date(2027, 3, 22, 12, 0, 0, 0, time.UTC)

// nightly is the plan: VM "web" by id and every VM labelled tier=gold,
// every 15 minutes from 22:00 to 02:00, a full backup at 00:00, runs due
// outside the window skipped, keeping the last 8 points and the newest of
// each of the last 3 days.
func nightly(webID string) plan.Plan {
	all := []schedule.Weekday{0, 1, 2, 3, 4, 5, 6}
	return plan.Plan{
		ID:            "nightly",
		Name:          "Nightly, every 15 minutes",
		Objects:       plan.Objects{VMIDs: []string{webID}, Selectors: []plan.Selector{{"tier": "gold"}}},
		Repository:    "file:///var/lib/vmbackup", // informational: the Service writes to its own repository
		Incremental:   schedule.Schedule{Kind: schedule.KindMinutes, Every: 15},
		Full:          &schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"00:00"}},
		Window:        &schedule.Window{Ranges: []schedule.Range{{Weekdays: all, Start: "22:00", End: "02:00"}}},
		OutsideWindow: schedule.OutsideSkip,
		Overrun:       schedule.OverrunStop,
		Retention:     plan.Retention{KeepLast: 8, Daily: 3},
		Compression:   plan.Compression{Enabled: true, Codec: "s2", RecompressTo: "zstd"}, // fast in the window, small after it
		Limits:        plan.Limits{ParallelVMs: 2, Retries: 1},
	}
}

func run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "vmbackup-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	repo, _, err := demo.OpenRepository(ctx, *repoURL, dir)
	if err != nil {
		return err
	}
	defer repo.Close()

	hv := fake.New(nil)
	defer hv.Close()
	var vms []hypervisor.VM
	for i, v := range []struct {
		name   string
		labels map[string]string
	}{{"web", nil}, {"db", map[string]string{"tier": "gold"}}, {"test", map[string]string{"tier": "bronze"}}} {
		vm, err := hv.AddVM(hypervisor.VM{Name: v.name, CPUs: 2, MemoryB: 2 << 30, Labels: v.labels,
			Disks: []hypervisor.DiskInfo{{Name: "root", Size: *size, Bus: "virtio", BootOrder: 1}}})
		if err != nil {
			return err
		}
		if err := testimage.Generate(ctx, guest{hv, vm}, *size, int64(i)); err != nil {
			return err
		}
		vms = append(vms, vm)
	}

	clock := schedule.NewFakeClock(start)
	svc, err := backup.New(backup.Config{
		Hypervisor: hv,
		Repository: repo,
		Clock:      clock,
		Logger:     slog.New(slog.DiscardHandler), // the history is the log here
	})
	if err != nil {
		return err
	}
	p, err := svc.PutPlan(ctx, nightly(vms[0].ID))
	if err != nil {
		return err
	}
	if err := svc.StartPlans(ctx); err != nil {
		return err
	}
	defer svc.Close(context.WithoutCancel(ctx))
	fmt.Printf("plan %q: every 15 minutes in 22:00–02:00, full at 00:00, keep the last 8 and 3 daily, s2 in the window and zstd after it; VMs web (by id) and db (tier=gold), not test\n\n", p.ID)

	out := &printer{svc: svc, plan: p.ID, names: map[string]string{}}
	for _, vm := range vms {
		out.names[vm.ID] = vm.Name
	}
	for end := start.AddDate(0, 0, *days); clock.Now().Before(end); {
		clock.Advance(15 * time.Minute)
		if err := svc.WaitIdle(ctx); err != nil {
			return err
		}
		if err := out.newRecords(ctx); err != nil {
			return err
		}
		// The guests write to 0.2 % of their blocks every 15 minutes.
		seed := clock.Now().Unix()
		for _, vm := range vms {
			if _, err := testimage.Mutate(ctx, guest{hv, vm}, *size, 0.002, seed, false); err != nil {
				return err
			}
			seed++
		}
	}
	out.flushSkips()
	return out.summary(ctx)
}

// guest writes to a VM's first disk as its guest would.
type guest struct {
	hv *fake.Hypervisor
	vm hypervisor.VM
}

func (g guest) WriteAt(p []byte, off int64) (int, error) {
	if err := g.hv.WriteDisk(context.Background(), g.vm.ID, g.vm.Disks[0].ID, off, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// printer prints the plan's new history records in order.
type printer struct {
	svc   *backup.Service
	plan  string
	names map[string]string
	seen  map[string]bool

	// A run of skips with one reason, printed as one line.
	skipFirst, skipLast time.Time
	skipReason          string
	skips               int
}

func (o *printer) newRecords(ctx context.Context) error {
	recs, err := o.svc.History(ctx, o.plan, 10)
	if err != nil {
		return err
	}
	if o.seen == nil {
		o.seen = map[string]bool{}
	}
	slices.Reverse(recs) // oldest first
	for _, r := range recs {
		if !r.Final() || o.seen[r.ID] {
			continue
		}
		o.seen[r.ID] = true
		if r.State == backup.JobSkipped {
			o.skip(r)
			continue
		}
		o.flushSkips()
		o.printRun(r)
	}
	return nil
}

func (o *printer) skip(r backup.JobRecord) {
	if *verbose {
		fmt.Printf("%s  skipped: %s\n", day(r.Due), r.Reason)
		return
	}
	if o.skips > 0 && r.Reason != o.skipReason {
		o.flushSkips()
	}
	if o.skips == 0 {
		o.skipFirst, o.skipReason = r.Due, r.Reason
	}
	o.skipLast = r.Due
	o.skips++
}

func (o *printer) flushSkips() {
	if o.skips == 0 {
		return
	}
	if o.skips == 1 {
		fmt.Printf("%s  skipped: %s\n", day(o.skipFirst), o.skipReason)
	} else {
		fmt.Printf("%s  skipped %d runs up to %s: %s\n", day(o.skipFirst), o.skips, day(o.skipLast), o.skipReason)
	}
	o.skips = 0
}

func (o *printer) printRun(r backup.JobRecord) {
	if rc := r.Recompress; r.Kind == backup.KindRecompress && rc != nil {
		fmt.Printf("%s  window closed: recompressed %d chunks from %s to %s\n", day(r.Started), rc.Rewritten, demo.Bytes(rc.BytesBefore), demo.Bytes(rc.BytesAfter))
		return
	}
	kind := "run"
	if r.Full {
		kind = "full run"
	}
	var vms []string
	for _, v := range r.VMs {
		if v.State == backup.VMSucceeded {
			vms = append(vms, fmt.Sprintf("%s %s read %s stored %s", o.names[v.VMID], v.Kind, demo.Bytes(v.BytesRead), demo.Bytes(v.BytesStored)))
		} else {
			vms = append(vms, fmt.Sprintf("%s %s: %s", o.names[v.VMID], v.State, v.Error))
		}
	}
	fmt.Printf("%s  %-8s %s: %s\n", day(r.Due), kind, r.State, strings.Join(vms, "; "))
	if r.Reason != "" {
		fmt.Printf("           %s\n", r.Reason)
	}
	if rt := r.Retention; rt != nil {
		for _, d := range rt.Forgotten {
			fmt.Printf("           retention: forget %s's point of %s\n", o.names[d.VMID], day(d.Created))
		}
		if rt.GC != nil && rt.GC.ChunksRemoved > 0 {
			fmt.Printf("           garbage collection: %d chunks removed, %s freed (objects younger than the grace period stay)\n", rt.GC.ChunksRemoved, demo.Bytes(rt.GC.BytesFreed))
		}
	}
}

// summary prints the plan's status and, from a dry run of its retention,
// why each point it holds is kept.
func (o *printer) summary(ctx context.Context) error {
	st, err := o.svc.PlanStatus(ctx, o.plan)
	if err != nil {
		return err
	}
	fmt.Printf("\nplan %q: %d restore points of %d VMs, %s logical, %s stored (compression %.2fx); last run due %s %s; next due %s\n",
		o.plan, st.Points, st.VMs, demo.Bytes(st.LogicalBytes), demo.Bytes(st.StoredBytes), st.CompressionRatio,
		day(st.LastRun.Due), st.LastRun.State, day(st.Next))
	rep, err := o.svc.ApplyRetention(ctx, o.plan, true)
	if err != nil {
		return err
	}
	fmt.Printf("retention (%s) keeps:\n", rep.Policy)
	slices.SortStableFunc(rep.Kept, func(a, b backup.PointDecision) int { return strings.Compare(o.names[a.VMID], o.names[b.VMID]) })
	for _, k := range rep.Kept {
		fmt.Printf("  %-4s %s  %s\n", o.names[k.VMID], day(k.Created), strings.Join(k.Reasons, ", "))
	}
	return nil
}

func day(t time.Time) string { return t.Format("Mon 15:04") }
