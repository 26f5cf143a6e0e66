package plan

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmbackup/vmbackup/retention"
	"github.com/vmbackup/vmbackup/schedule"
)

// TestSimulatedDays drives a plan through the Local scheduler on a fake
// clock for three days, the way the backup Service does, with a stand-in
// for the engine that records one point per VM per successful run and
// applies the plan's retention after each: every 15 minutes inside a
// nightly window 22:00–02:00, skip outside it, stop on overrun, keep the
// last 5 and the newest of 3 days. One run hangs and is stopped at the
// window's close; it leaves no point. The points left at the end are
// checked exactly.
func TestSimulatedDays(t *testing.T) {
	p := valid()
	p.Objects = Objects{VMIDs: []string{"vm-1"}, Selectors: []Selector{{"tier": "gold"}}}
	p.Incremental = schedule.Schedule{Kind: schedule.KindMinutes, Every: 15}
	p.Full = &schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"22:00"}}
	p.Window = &schedule.Window{Ranges: []schedule.Range{{Weekdays: []schedule.Weekday{0, 1, 2, 3, 4, 5, 6}, Start: "22:00", End: "02:00"}}}
	p.OutsideWindow, p.Overrun = schedule.OutsideSkip, schedule.OverrunStop
	p.Retention = Retention{KeepLast: 5, Daily: 3}
	p.State = Enabled
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	inventory := []VM{{ID: "vm-1"}, {ID: "vm-2", Labels: map[string]string{"tier": "gold"}}, {ID: "vm-3"}}

	start := time.Date(2027, 3, 8, 3, 0, 0, 0, time.UTC) // Monday
	hang := time.Date(2027, 3, 9, 23, 45, 0, 0, time.UTC)
	clock := schedule.NewFakeClock(start)

	var (
		mu         sync.Mutex
		cond       = sync.NewCond(&mu)
		points     []retention.Point
		fulls      = map[string]bool{}
		started    int
		finished   int
		hangCtx    context.Context // the hung run's, once it started
		fullStarts int
		events     = map[string]int{}
	)
	s := schedule.NewLocal(&schedule.Options{Clock: clock, Logger: slog.New(slog.DiscardHandler), OnEvent: func(e schedule.Event) {
		mu.Lock()
		defer mu.Unlock()
		events[string(e.Kind)+" "+string(e.Reason)]++
		switch e.Kind {
		case schedule.EventStarted:
			started++
			if e.Full {
				fullStarts++
			}
		case schedule.EventFinished:
			finished++
		}
		cond.Broadcast()
	}})
	defer s.Close(context.Background())

	run := func(ctx context.Context, r schedule.Run) error {
		if r.Due.Equal(hang) {
			mu.Lock()
			hangCtx = ctx
			cond.Broadcast()
			mu.Unlock()
			<-ctx.Done() // the engine cleans up and makes no point
			return ctx.Err()
		}
		now := clock.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, id := range p.Objects.Resolve(inventory) {
			pt := retention.Point{ID: id + "@" + now.Format("Mon 15:04"), VMID: id, Time: now}
			points = append(points, pt)
			fulls[pt.ID] = r.Full
		}
		ds, err := retention.Apply(points, p.RetentionPolicy(), now)
		if err != nil {
			return err
		}
		points = points[:0]
		for _, d := range ds {
			if d.Keep {
				points = append(points, d.Point)
			}
		}
		return nil
	}
	if err := p.ApplyTo(s, time.Time{}, run); err != nil {
		t.Fatal(err)
	}
	for clock.Now().Before(start.AddDate(0, 0, 3)) {
		clock.Advance(5 * time.Minute)
		// Wait until every run has finished, but for the hung one while
		// its context is not cancelled.
		mu.Lock()
		for finished < started && !(hangCtx != nil && hangCtx.Err() == nil && finished == started-1) {
			cond.Wait()
		}
		mu.Unlock()
	}

	mu.Lock()
	defer mu.Unlock()
	var got []string
	for _, pt := range points {
		s := pt.ID
		if fulls[pt.ID] {
			s += " full"
		}
		got = append(got, s)
	}
	slices.Sort(got)
	var want []string
	for _, vm := range []string{"vm-1", "vm-2"} {
		for _, at := range []string{"Thu 00:45", "Thu 01:00", "Thu 01:15", "Thu 01:30", "Thu 01:45", "Tue 23:30", "Wed 23:45"} {
			want = append(want, vm+"@"+at)
		}
	}
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("points left (-want +got):\n%s", diff)
	}
	// Three windows of 16 runs, less the hung one and the 8 it blocked.
	wantEvents := map[string]int{
		"started ":  16*3 - 8,
		"finished ": 16*3 - 8,
		"skipped " + string(schedule.ReasonOutsideWindow): 3*96 - 3*16,
		"skipped " + string(schedule.ReasonBusy):          8,
		"overrun " + string(schedule.ReasonOverrunStop):   1,
	}
	if diff := cmp.Diff(wantEvents, events); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if fullStarts != 3 {
		t.Errorf("%d full runs, want 3 (22:00 each night)", fullStarts)
	}
}
