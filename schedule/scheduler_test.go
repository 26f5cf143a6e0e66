package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// call is one RunFunc invocation that the test finishes by sending its
// result on done (or that ends when its context is cancelled).
type call struct {
	r    Run
	ctx  context.Context
	done chan error
}

// harness drives a Local on a FakeClock. Runs either finish at once
// (auto) or block until the test finishes them.
type harness struct {
	t     *testing.T
	clock *FakeClock
	s     *Local

	mu     sync.Mutex
	cond   *sync.Cond
	events []Event
	calls  chan *call
	auto   bool
}

func newHarness(t *testing.T, t0 time.Time, maxParallel int, auto bool) *harness {
	h := &harness{t: t, clock: NewFakeClock(t0), calls: make(chan *call, 1000), auto: auto}
	h.cond = sync.NewCond(&h.mu)
	h.s = NewLocal(&Options{
		Clock:       h.clock,
		MaxParallel: maxParallel,
		Logger:      slog.New(slog.DiscardHandler),
		OnEvent: func(e Event) {
			h.mu.Lock()
			h.events = append(h.events, e)
			h.cond.Broadcast()
			h.mu.Unlock()
		},
	})
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		h.s.Close(ctx)
	})
	return h
}

func (h *harness) runFunc(ctx context.Context, r Run) error {
	if h.auto {
		return nil
	}
	c := &call{r: r, ctx: ctx, done: make(chan error, 1)}
	h.calls <- c
	select {
	case err := <-c.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (h *harness) start(e Entry) {
	h.t.Helper()
	if err := h.s.Start(e, h.runFunc); err != nil {
		h.t.Fatal(err)
	}
}

// waitFor blocks until n events satisfy pred. A deadlock guard, not a
// timing assumption: it fails the test after 10 s of real time.
func (h *harness) waitFor(n int, pred func(Event) bool) {
	h.t.Helper()
	deadline := time.AfterFunc(10*time.Second, func() {
		h.mu.Lock()
		h.cond.Broadcast()
		h.mu.Unlock()
	})
	defer deadline.Stop()
	start := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for {
		got := 0
		for _, e := range h.events {
			if pred(e) {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Since(start) > 10*time.Second {
			h.t.Fatalf("waited for %d events, have %d", n, got)
		}
		h.cond.Wait()
	}
}

func (h *harness) count(kind EventKind) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// settle waits until every started run has finished.
func (h *harness) settle() {
	h.t.Helper()
	n := h.count(EventStarted)
	h.waitFor(n, func(e Event) bool { return e.Kind == EventFinished })
}

// advance moves the clock in steps of at most step, settling after each;
// with auto runs, a step shorter than the schedule's interval makes every
// run finish before the next is due.
func (h *harness) advance(d, step time.Duration) {
	end := h.clock.Now().Add(d)
	for h.clock.Now().Before(end) {
		h.clock.AdvanceTo(minTime(h.clock.Now().Add(step), end))
		h.settle()
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// log renders the events (other than finished) compactly for go-cmp.
func (h *harness) log() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, e := range h.events {
		if e.Kind == EventFinished && e.Err == nil {
			continue
		}
		s := fmt.Sprintf("%s %s %s due %s", e.At.Format("Mon 15:04"), e.PlanID, e.Kind, e.Due.Format("15:04"))
		if e.Full {
			s += " full"
		}
		if e.CatchUp {
			s += " catch-up"
		}
		if e.Reason != "" {
			s += ": " + string(e.Reason)
		}
		if !e.Until.IsZero() {
			s += " until " + e.Until.Format("Mon 15:04")
		}
		if e.Missed > 0 {
			s += fmt.Sprintf(" missed %d from %s", e.Missed, e.First.Format("15:04"))
		}
		if e.Err != nil {
			s += " err " + e.Err.Error()
		}
		out = append(out, s)
	}
	h.events = h.events[:0]
	return out
}

func (h *harness) check(want []string) {
	h.t.Helper()
	if diff := cmp.Diff(want, h.log()); diff != "" {
		h.t.Errorf("events (-want +got):\n%s", diff)
	}
}

func (h *harness) nextCall() *call {
	h.t.Helper()
	select {
	case c := <-h.calls:
		return c
	case <-time.After(10 * time.Second):
		h.t.Fatal("no run started")
		return nil
	}
}

// finish ends c with err and waits for its Finished event.
func (h *harness) finish(c *call, err error) {
	h.t.Helper()
	n := h.count(EventFinished)
	c.done <- err
	h.waitFor(n+1, func(e Event) bool { return e.Kind == EventFinished })
}

// 2027-03-08 is a Monday.
var monday = time.Date(2027, 3, 8, 0, 0, 0, 0, time.UTC)

func TestLocalRunsEveryDueTime(t *testing.T) {
	h := newHarness(t, monday, 4, true)
	h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindMinutes, Every: 15}})
	h.advance(7*24*time.Hour, 5*time.Minute)
	if got := h.count(EventStarted); got != 7*96 {
		t.Errorf("%d runs in a week of every 15 minutes, want %d", got, 7*96)
	}
	if got := h.count(EventSkipped); got != 0 {
		t.Errorf("%d skipped", got)
	}
	st, err := h.s.Status("p")
	if err != nil {
		t.Fatal(err)
	}
	if want := monday.AddDate(0, 0, 7).Add(15 * time.Minute); !st.Next.Equal(want) || !st.LastDue.Equal(monday.AddDate(0, 0, 7)) || st.Running {
		t.Errorf("status %+v, want next %v", st, want)
	}
}

func TestLocalDST(t *testing.T) {
	berlin := mustLoc(t, "Europe/Berlin")
	for _, tt := range []struct {
		name string
		day  time.Time
		want int
	}{
		{"spring forward", time.Date(2027, 3, 28, 0, 0, 0, 0, berlin), 92}, // 02:00-02:45 fold into 03:00
		{"fall back", time.Date(2027, 10, 31, 0, 0, 0, 0, berlin), 96},     // the repeated hour runs once
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.day.Add(-time.Second), 4, true)
			h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindMinutes, Every: 15, TZ: "Europe/Berlin"}})
			end := time.Date(tt.day.Year(), tt.day.Month(), tt.day.Day()+1, 0, 0, 0, 0, berlin).Add(-time.Second)
			h.advance(end.Sub(h.clock.Now()), 5*time.Minute)
			if got := h.count(EventStarted); got != tt.want {
				t.Errorf("%d runs on the day, want %d", got, tt.want)
			}
		})
	}
}

func TestLocalBusyAndOwedFull(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, false)
	h.start(Entry{PlanID: "p",
		Incremental: Schedule{Kind: KindHours, Every: 1},
		Full:        &Schedule{Kind: KindWeekly, Weekdays: []Weekday{Monday}, Times: []string{"01:00"}},
	})
	h.clock.Advance(time.Minute) // 00:00
	c := h.nextCall()
	h.clock.Advance(2 * time.Hour) // 01:00 (full) and 02:00 are busy
	h.finish(c, nil)
	h.clock.Advance(time.Hour) // 03:00 owes the full
	c = h.nextCall()
	if !c.r.Full {
		t.Errorf("run after a skipped full is not full: %+v", c.r)
	}
	h.finish(c, errors.New("disk on fire"))
	h.clock.Advance(time.Hour)
	h.finish(h.nextCall(), nil)
	h.check([]string{
		"Mon 00:00 p started due 00:00",
		"Mon 01:00 p skipped due 01:00 full: the plan's previous run is still going",
		"Mon 02:00 p skipped due 02:00: the plan's previous run is still going",
		"Mon 03:00 p started due 03:00 full",
		"Mon 03:00 p finished due 03:00 full err disk on fire",
		"Mon 04:00 p started due 04:00",
	})
}

func TestLocalWindow(t *testing.T) {
	night := &Window{Ranges: []Range{{Weekdays: []Weekday{Monday}, Start: "22:00", End: "02:00"}}}
	t.Run("wait", func(t *testing.T) {
		h := newHarness(t, monday.Add(19*time.Hour), 4, false)
		h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 2}, Window: night})
		h.clock.Advance(3 * time.Hour) // 20:00 waits; 22:00 opens
		c := h.nextCall()
		h.finish(c, nil)
		h.clock.Advance(2 * time.Hour) // Tue 00:00 inside
		h.finish(h.nextCall(), nil)
		h.clock.Advance(2 * time.Hour) // 02:00 is the close: outside
		h.check([]string{
			"Mon 20:00 p deferred due 20:00 until Mon 22:00",
			"Mon 22:00 p started due 20:00",
			"Mon 22:00 p skipped due 22:00: the plan's previous run is still going",
			"Tue 00:00 p started due 00:00",
			"Tue 02:00 p deferred due 02:00 until Mon 22:00",
		})
		if st, _ := h.s.Status("p"); !st.Waiting || st.Running {
			t.Errorf("status %+v, want waiting", st)
		}
	})
	t.Run("wait while waiting", func(t *testing.T) {
		h := newHarness(t, monday.Add(19*time.Hour+30*time.Minute), 4, false)
		h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}, Window: night})
		h.clock.Advance(150 * time.Minute) // 20:00 waits, 21:00 too, 22:00 opens
		h.finish(h.nextCall(), nil)
		h.check([]string{
			"Mon 20:00 p deferred due 20:00 until Mon 22:00",
			"Mon 21:00 p skipped due 21:00: the plan's previous run is waiting for the window or a free slot",
			"Mon 22:00 p started due 20:00",
			"Mon 22:00 p skipped due 22:00: the plan's previous run is still going",
		})
	})
	t.Run("skip", func(t *testing.T) {
		h := newHarness(t, monday.Add(19*time.Hour), 4, false)
		h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 2}, Window: night, OutsideWindow: OutsideSkip})
		h.clock.Advance(3 * time.Hour)
		h.finish(h.nextCall(), nil)
		h.check([]string{
			"Mon 20:00 p skipped due 20:00: due outside the backup window",
			"Mon 22:00 p started due 22:00",
		})
	})
	t.Run("overrun stop", func(t *testing.T) {
		h := newHarness(t, monday.Add(23*time.Hour), 4, false)
		h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindDays, Every: 1, Times: []string{"01:30"}}, Window: night})
		h.clock.Advance(150 * time.Minute) // Tue 01:30 starts
		c := h.nextCall()
		n := h.count(EventFinished)
		h.clock.Advance(30 * time.Minute) // 02:00 closes
		<-c.ctx.Done()
		if cause := context.Cause(c.ctx); !errors.Is(cause, ErrWindowClosed) {
			t.Errorf("cause of the cancelled run = %v, want ErrWindowClosed", cause)
		}
		h.waitFor(n+1, func(e Event) bool { return e.Kind == EventFinished })
		h.check([]string{
			"Tue 01:30 p started due 01:30",
			"Tue 02:00 p overrun due 01:30: the window closed: run cancelled",
			"Tue 02:00 p finished due 01:30 err context canceled",
		})
	})
	t.Run("overrun continue", func(t *testing.T) {
		h := newHarness(t, monday.Add(23*time.Hour), 4, false)
		h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindDays, Every: 1, Times: []string{"01:30"}}, Window: night, Overrun: OverrunContinue})
		h.clock.Advance(150 * time.Minute)
		c := h.nextCall()
		h.clock.Advance(time.Hour)
		if c.ctx.Err() != nil {
			t.Fatal("run cancelled under OverrunContinue")
		}
		h.finish(c, nil)
		h.check([]string{
			"Tue 01:30 p started due 01:30",
			"Tue 02:00 p overrun due 01:30: the window closed: run continues",
		})
	})
}

func TestLocalCatchUp(t *testing.T) {
	night := &Window{Ranges: []Range{{Weekdays: []Weekday{Monday}, Start: "22:00", End: "06:00"}}}
	tests := []struct {
		name    string
		now     time.Duration // after Monday 00:00
		lastRun time.Duration
		window  *Window
		want    []string
	}{
		{"one catch-up for three missed", 23*time.Hour + 30*time.Minute, 20 * time.Hour, night, []string{
			"Mon 23:30 p missed due 23:00 missed 3 from 21:00",
			"Mon 23:30 p started due 23:00 catch-up",
		}},
		{"outside the window", 12*time.Hour + 30*time.Minute, 10 * time.Hour, night, []string{
			"Mon 12:30 p missed due 12:00 missed 2 from 11:00",
			"Mon 12:30 p skipped due 12:00 catch-up: due outside the backup window",
		}},
		{"nothing missed", 12*time.Hour + 30*time.Minute, 12 * time.Hour, nil, nil},
		{"due at start counts", 12 * time.Hour, 11 * time.Hour, nil, []string{
			"Mon 12:00 p missed due 12:00 missed 1 from 12:00",
			"Mon 12:00 p started due 12:00 catch-up",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, monday.Add(tt.now), 4, false)
			h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}, Window: tt.window, LastRun: monday.Add(tt.lastRun)})
			h.check(tt.want)
		})
	}
}

func TestLocalParallelLimit(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 1, false)
	for _, id := range []string{"a", "b"} {
		h.start(Entry{PlanID: id, Incremental: Schedule{Kind: KindHours, Every: 1}})
	}
	h.clock.Advance(time.Minute)
	first := h.nextCall()
	h.finish(first, nil)
	second := h.nextCall()
	if first.r.PlanID == second.r.PlanID {
		t.Fatalf("both runs of %s", first.r.PlanID)
	}
	h.finish(second, nil)
	log := h.log()
	want := []string{
		"Mon 00:00 " + first.r.PlanID + " started due 00:00",
		"Mon 00:00 " + second.r.PlanID + " queued due 00:00",
		"Mon 00:00 " + second.r.PlanID + " started due 00:00",
	}
	if diff := cmp.Diff(want, log); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
}

func TestLocalPauseResumeStop(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, true)
	h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}})
	if err := h.s.Pause("p"); err != nil {
		t.Fatal(err)
	}
	h.advance(2*time.Hour, time.Hour) // 00:00, 01:00 skipped
	if st, _ := h.s.Status("p"); !st.Paused {
		t.Error("status not paused")
	}
	if err := h.s.Resume("p"); err != nil {
		t.Fatal(err)
	}
	h.advance(time.Hour, time.Hour) // 02:00 runs
	if err := h.s.Stop("p"); err != nil {
		t.Fatal(err)
	}
	h.advance(2*time.Hour, time.Hour)
	h.check([]string{
		"Mon 00:00 p skipped due 00:00: the plan is paused",
		"Mon 01:00 p skipped due 01:00: the plan is paused",
		"Mon 02:00 p started due 02:00",
	})
	for name, err := range map[string]error{"stop": h.s.Stop("p"), "pause": h.s.Pause("x"), "resume": h.s.Resume("p")} {
		if !errors.Is(err, ErrUnknownPlan) {
			t.Errorf("%s of an unknown plan: %v, want ErrUnknownPlan", name, err)
		}
	}
	if _, err := h.s.Status("p"); !errors.Is(err, ErrUnknownPlan) {
		t.Errorf("status: %v", err)
	}
	if h.clock.Timers() != 0 {
		t.Errorf("%d timers left after Stop", h.clock.Timers())
	}
}

func TestLocalRestartKeepsRunningRun(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, false)
	e := Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}}
	h.start(e)
	h.clock.Advance(time.Minute)
	c := h.nextCall()
	if err := h.s.Stop("p"); err != nil {
		t.Fatal(err)
	}
	e.Incremental.Every = 2
	h.start(e) // replaces the timing; the running run still counts
	h.clock.Advance(2 * time.Hour)
	h.finish(c, nil)
	h.check([]string{
		"Mon 00:00 p started due 00:00",
		"Mon 02:00 p skipped due 02:00: the plan's previous run is still going",
	})
}

func TestLocalClose(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, false)
	h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}})
	h.clock.Advance(time.Minute)
	c := h.nextCall()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.s.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want context.Canceled", err)
	}
	if c.ctx.Err() == nil {
		t.Error("run not cancelled by Close")
	}
	if errors.Is(context.Cause(c.ctx), ErrWindowClosed) {
		t.Error("a run cancelled by Close gives ErrWindowClosed as its cause")
	}
	if err := h.s.Start(Entry{PlanID: "q", Incremental: Schedule{Kind: KindHours, Every: 1}}, h.runFunc); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v", err)
	}
	if err := h.s.Close(context.Background()); err != nil {
		t.Errorf("second Close = %v", err)
	}
}

func TestEntryValidate(t *testing.T) {
	full := Schedule{Kind: KindHours}
	e := Entry{Incremental: Schedule{Kind: KindMinutes, Every: 1}, Full: &full, Window: &Window{}, OutsideWindow: "x", Overrun: "y"}
	want := []string{
		"planID: is required",
		"incremental.every: is 1, must be 15–59 minutes",
		"full.every: is 0, must be 1–23 hours",
		"window.ranges: at least one range is required",
		`outsideWindow: "x" is unknown, must be wait or skip`,
		`overrun: "y" is unknown, must be stop or continue`,
	}
	if diff := cmp.Diff(want, fieldErrors(e.Validate())); diff != "" {
		t.Errorf("Validate (-want +got):\n%s", diff)
	}
	s := NewLocal(nil)
	defer s.Close(context.Background())
	if err := s.Start(e, func(context.Context, Run) error { return nil }); err == nil {
		t.Error("Start accepted an invalid entry")
	}
}

func TestFakeClock(t *testing.T) {
	c := NewFakeClock(monday)
	var got []string
	c.AfterFunc(2*time.Minute, func() { got = append(got, "b "+c.Now().Format("15:04")) })
	c.AfterFunc(time.Minute, func() {
		got = append(got, "a "+c.Now().Format("15:04"))
		c.AfterFunc(30*time.Second, func() { got = append(got, "a2 "+c.Now().Format("15:04:05")) })
	})
	stopped := c.AfterFunc(time.Minute, func() { got = append(got, "stopped") })
	c.AfterFunc(2*time.Minute, func() { got = append(got, "b-tie") })
	if !stopped.Stop() || stopped.Stop() {
		t.Error("Stop reports wrongly")
	}
	c.Advance(90 * time.Second)
	c.Advance(time.Hour)
	want := []string{"a 00:01", "a2 00:01:30", "b 00:02", "b-tie"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("firing order (-want +got):\n%s", diff)
	}
	if !c.Now().Equal(monday.Add(90*time.Second + time.Hour)) {
		t.Errorf("now %v", c.Now())
	}
}

// jumpClock is a FakeClock whose wall clock can be set forward without
// firing timers, like an NTP step or a resume from suspend.
type jumpClock struct {
	*FakeClock
	mu     sync.Mutex
	offset time.Duration
}

func (c *jumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.FakeClock.Now().Add(c.offset)
}

func (c *jumpClock) AfterFunc(d time.Duration, f func()) Timer { return c.FakeClock.AfterFunc(d, f) }

func TestLocalClockJump(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, true)
	jc := &jumpClock{FakeClock: h.clock}
	h.s.clock = jc // before any plan is started
	h.start(Entry{PlanID: "p", Incremental: Schedule{Kind: KindHours, Every: 1}})
	jc.mu.Lock()
	jc.offset = 3*time.Hour + 30*time.Minute // the wall clock is now Mon 03:29
	jc.mu.Unlock()
	h.clock.Advance(time.Minute) // the next MaxWait tick notices
	h.settle()
	h.check([]string{
		"Mon 03:30 p missed due 03:00 missed 3 from 00:00",
		"Mon 03:30 p started due 03:00",
	})
}

func TestLocalQueuedThenWindowClosed(t *testing.T) {
	// Window Monday 00:00–01:00. Plan a runs 00:30–01:30 (continue), so
	// b's 00:45 run waits for the slot until the window has closed, and
	// then for the next opening.
	w := &Window{Ranges: []Range{{Weekdays: []Weekday{Monday}, Start: "00:00", End: "01:00"}}}
	h := newHarness(t, monday, 1, false)
	h.start(Entry{PlanID: "a", Incremental: Schedule{Kind: KindDays, Every: 1, Times: []string{"00:30"}}, Window: w, Overrun: OverrunContinue})
	h.start(Entry{PlanID: "b", Incremental: Schedule{Kind: KindDays, Every: 1, Times: []string{"00:45"}}, Window: w})
	h.clock.Advance(30 * time.Minute)
	a := h.nextCall()
	h.clock.Advance(time.Hour) // 00:45 b queued; 01:00 a overruns
	h.finish(a, nil)
	if st, _ := h.s.Status("b"); !st.Waiting {
		t.Errorf("b: %+v, want waiting", st)
	}
	if err := h.s.Pause("b"); err != nil {
		t.Fatal(err)
	}
	h.check([]string{
		"Mon 00:30 a started due 00:30",
		"Mon 00:45 b queued due 00:45",
		"Mon 01:00 a overrun due 00:30: the window closed: run continues",
		"Mon 01:30 b deferred due 00:45 until Mon 00:00",
		"Mon 01:30 b skipped due 00:45: the plan is paused",
	})
	if n := h.clock.Timers(); n != 2 { // the two plans' next due times
		t.Errorf("%d timers set, want 2 (the deferred run's timer must be stopped)", n)
	}
}

func TestLocalFullUnion(t *testing.T) {
	h := newHarness(t, monday.Add(-time.Minute), 4, true)
	h.start(Entry{PlanID: "p",
		Incremental: Schedule{Kind: KindHours, Every: 2},
		Full:        &Schedule{Kind: KindCron, Cron: "30 1 * * *"},
	})
	h.advance(3*time.Hour, 5*time.Minute)
	h.check([]string{
		"Mon 00:00 p started due 00:00",
		"Mon 01:30 p started due 01:30 full",
		"Mon 02:00 p started due 02:00",
	})
}

func TestEventString(t *testing.T) {
	at := time.Date(2027, 3, 8, 1, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		e    Event
		want string
	}{
		{Event{PlanID: "p", Kind: EventSkipped, At: at, Due: at, Full: true, Reason: ReasonBusy},
			"2027-03-08T01:00:00Z p skipped due 2027-03-08T01:00:00Z full: the plan's previous run is still going"},
		{Event{PlanID: "p", Kind: EventDeferred, At: at, Due: at, CatchUp: true, Until: at.Add(time.Hour)},
			"2027-03-08T01:00:00Z p deferred due 2027-03-08T01:00:00Z catch-up until 2027-03-08T02:00:00Z"},
		{Event{PlanID: "p", Kind: EventMissed, At: at, Due: at, First: at.Add(-time.Hour), Missed: 2},
			"2027-03-08T01:00:00Z p missed due 2027-03-08T01:00:00Z (2 missed from 2027-03-08T00:00:00Z)"},
		{Event{PlanID: "p", Kind: EventFinished, At: at, Due: at, Err: errors.New("boom")},
			"2027-03-08T01:00:00Z p finished due 2027-03-08T01:00:00Z: boom"},
	} {
		if got := tt.e.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

// TestSystemClock checks that the real clock's timers fire and stop; it
// waits on channels, never on durations.
func TestSystemClock(t *testing.T) {
	fired := make(chan struct{})
	SystemClock.AfterFunc(0, func() { close(fired) })
	<-fired
	stopped := SystemClock.AfterFunc(time.Hour, func() { t.Error("stopped timer fired") })
	if !stopped.Stop() {
		t.Error("Stop of a pending timer reported false")
	}
	if SystemClock.Now().IsZero() {
		t.Error("zero time")
	}
}
