package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// ErrUnknownPlan is returned for a plan ID the Scheduler does not hold.
var ErrUnknownPlan = errors.New("schedule: unknown plan")

// ErrClosed is returned by a Scheduler after Close.
var ErrClosed = errors.New("schedule: scheduler closed")

// Run is one execution of a plan that the Scheduler hands to its RunFunc.
type Run struct {
	PlanID string
	// Due is the scheduled time of the run (for a catch-up, the latest
	// time missed); a run that waited for its window or for a free slot
	// starts later than Due.
	Due time.Time
	// Full is true if Due is a time of the plan's full schedule, or a
	// full run was skipped or missed since the last run started (the
	// full backup it owed is made by this run).
	Full bool
	// CatchUp is true for the one run made on Start for times missed
	// while the process was down.
	CatchUp bool
}

// ErrWindowClosed is the cause (context.Cause) of a run's context cancelled
// because its window closed under OverrunStop.
var ErrWindowClosed = errors.New("schedule: the backup window closed")

// RunFunc performs a run. Its context is cancelled when the run's window
// closes under OverrunStop (context.Cause is then ErrWindowClosed), and when
// Close gives up waiting. The
// Scheduler considers the run going until RunFunc returns.
type RunFunc func(ctx context.Context, r Run) error

// Entry is what a Scheduler needs to know of a plan.
type Entry struct {
	PlanID      string
	Incremental Schedule
	// Full, if set, marks the runs that are full backups: its times are
	// added to Incremental's and a run due at one of them is Full.
	Full *Schedule
	// Window, if set, limits when runs start (and, with OverrunStop,
	// when they must finish).
	Window        *Window
	OutsideWindow OutsideWindow // default OutsideWait
	Overrun       Overrun       // default OverrunStop
	// LastRun is the Due of the plan's last run before this Start (from
	// the job history); zero means none, and no catch-up is considered.
	LastRun time.Time
	// Paused starts the plan paused (see Scheduler.Pause): its due times,
	// and a catch-up, are skipped until Resume.
	Paused bool
}

// Validate checks the entry's schedules, window and policies.
func (e Entry) Validate() error {
	var errs []error
	if e.PlanID == "" {
		errs = append(errs, &FieldError{Field: "planID", Rule: "is required"})
	}
	prefix := func(p string, err error) {
		for _, x := range flatten(err) {
			var fe *FieldError
			if errors.As(x, &fe) {
				errs = append(errs, &FieldError{Field: p + "." + fe.Field, Rule: fe.Rule})
			} else {
				errs = append(errs, x)
			}
		}
	}
	prefix("incremental", e.Incremental.Validate())
	if e.Full != nil {
		prefix("full", e.Full.Validate())
	}
	if e.Window != nil {
		prefix("window", e.Window.Validate())
	}
	errs = append(errs, e.OutsideWindow.Validate(), e.Overrun.Validate())
	return errors.Join(errs...)
}

// flatten lists the errors inside an errors.Join result.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, x := range j.Unwrap() {
			out = append(out, flatten(x)...)
		}
		return out
	}
	return []error{err}
}

// EventKind names what happened to a plan's run.
type EventKind string

// The events a Scheduler reports.
const (
	// EventStarted: the run was handed to the RunFunc.
	EventStarted EventKind = "started"
	// EventFinished: the RunFunc returned; Err is its error.
	EventFinished EventKind = "finished"
	// EventSkipped: the run due at Due will not be made; Reason says why.
	EventSkipped EventKind = "skipped"
	// EventDeferred: the run is due outside the window and waits for the
	// opening at Until.
	EventDeferred EventKind = "deferred"
	// EventQueued: the run waits for one of the MaxParallel slots.
	EventQueued EventKind = "queued"
	// EventMissed: Missed due times, the earliest at First, passed
	// without a run of their own while the process was down (or the wall
	// clock jumped). Due is the time of the one run made in their stead:
	// the catch-up on Start (Due is then the latest missed time), or the
	// run due now after a jump.
	EventMissed EventKind = "missed"
	// EventOverrun: the window closed while the run was going; Reason
	// says whether it was stopped or continues.
	EventOverrun EventKind = "overrun"
)

// Reason explains a skipped run or an overrun.
type Reason string

// Reasons of EventSkipped and EventOverrun.
const (
	ReasonBusy          Reason = "the plan's previous run is still going"
	ReasonWaiting       Reason = "the plan's previous run is waiting for the window or a free slot"
	ReasonOutsideWindow Reason = "due outside the backup window"
	ReasonPaused        Reason = "the plan is paused"
	ReasonStopped       Reason = "the plan was stopped or changed"
	ReasonClosed        Reason = "the scheduler was closed"
	ReasonOverrunStop   Reason = "the window closed: run cancelled"
	ReasonOverrunGoOn   Reason = "the window closed: run continues"
)

// Event records a Scheduler decision. Every due time of a started plan
// produces exactly one of Started, Skipped, Deferred or Queued (the last
// two followed later by Started or Skipped), or is counted in a Missed.
type Event struct {
	PlanID string
	Kind   EventKind
	// At is the clock's time of the decision.
	At      time.Time
	Due     time.Time
	Full    bool
	CatchUp bool
	// Reason is set for EventSkipped and EventOverrun.
	Reason Reason
	// Until is the window's next opening, for EventDeferred.
	Until time.Time
	// First and Missed describe an EventMissed: the first missed time and
	// how many were missed (Due is the last).
	First  time.Time
	Missed int
	// Err is the RunFunc's error, for EventFinished.
	Err error
}

// String renders the event on one line for logs and examples.
func (e Event) String() string {
	s := fmt.Sprintf("%s %s %s due %s", e.At.Format(time.RFC3339), e.PlanID, e.Kind, e.Due.Format(time.RFC3339))
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
		s += " until " + e.Until.Format(time.RFC3339)
	}
	if e.Missed > 0 {
		s += fmt.Sprintf(" (%d missed from %s)", e.Missed, e.First.Format(time.RFC3339))
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Status is a plan's state in a Scheduler.
type Status struct {
	// Next is the next due time (zero if the schedule never runs again).
	Next    time.Time
	Paused  bool
	Running bool
	// Waiting is true while a run waits for the window or a free slot.
	Waiting bool
	// LastDue is the Due of the last run started (zero: none yet).
	LastDue time.Time
}

// Scheduler fires a plan's runs at its scheduled times. It is the
// interface the backup Service uses; Local is the in-process one.
type Scheduler interface {
	// Start begins firing e's runs through run, or replaces the timing of
	// a plan already started (a run in progress is kept; a run waiting for
	// its window or a slot is dropped; the plan is paused iff e.Paused).
	// Missed runs since e.LastRun are reported and caught up once, see
	// Local.
	Start(e Entry, run RunFunc) error
	// Stop ends the plan's scheduling; a run in progress goes on.
	Stop(planID string) error
	// Pause skips the plan's due times (recorded) until Resume.
	Pause(planID string) error
	// Resume undoes Pause; runs due while paused are not made up.
	Resume(planID string) error
	// Status reports a plan's next due time and whether it is running.
	Status(planID string) (Status, error)
	// Close stops every plan and waits for runs in progress to return;
	// when ctx ends first it cancels them, waits, and returns ctx.Err().
	Close(ctx context.Context) error
}

// Defaults of Options.
const (
	// DefaultMaxParallel is the default of Options.MaxParallel.
	DefaultMaxParallel = 4
	// DefaultMaxWait is the default of Options.MaxWait.
	DefaultMaxWait = time.Minute
	// maxMissed bounds the count of missed runs computed on Start.
	maxMissed = 1_000_000
)

// Options configures a Local scheduler; the zero value is usable.
type Options struct {
	// Clock is the time source; nil means SystemClock.
	Clock Clock
	// MaxParallel is the most runs going at once over all plans; further
	// runs queue in order of arrival. 0 means DefaultMaxParallel.
	MaxParallel int
	// MaxWait is the longest a timer sleeps before the Scheduler looks at
	// the clock again, so a wall clock that is set (NTP step, suspend) is
	// noticed; 0 means DefaultMaxWait.
	MaxWait time.Duration
	// OnEvent receives every Event in order. It is called with the
	// Scheduler's lock held: it must return quickly and not call the
	// Scheduler. nil drops events (they are still logged).
	OnEvent func(Event)
	// Logger receives a line per decision; nil means slog.Default().
	Logger *slog.Logger
}

// Local is the in-process Scheduler. Its rules:
//
//   - A plan's due times are the union of its incremental and full
//     schedules; each is handled once, in order.
//   - A due time outside the window is skipped under OutsideSkip
//     (ReasonOutsideWindow).
//   - Otherwise, a due time while the plan's previous run is still going
//     is skipped (ReasonBusy; ReasonWaiting if that run is queued or
//     waiting for the window). A skipped or missed full run makes the next run Full.
//   - Otherwise, a due time outside the window waits for its next
//     opening (OutsideWait, EventDeferred). A queued run whose slot
//     frees outside the window is deferred or skipped by the same rule.
//   - When a run's window closes while it is going, OverrunStop cancels
//     its context; OverrunContinue lets it go on; both are recorded.
//   - On Start with a LastRun, due times in (LastRun, now] are reported
//     as one EventMissed and, if now is inside the window (or there is
//     none), one catch-up run is made for the latest of them; outside
//     the window they are skipped (ReasonOutsideWindow) whatever the
//     OutsideWindow policy, since the run they belonged to is over.
//   - At most MaxParallel runs go at once over all plans.
//
// Local is safe for concurrent use.
type Local struct {
	clock   Clock
	max     int
	maxWait time.Duration
	onEvent func(Event)
	log     *slog.Logger

	mu      sync.Mutex
	plans   map[string]*planState
	queue   []*planState
	running int
	closed  bool
	wg      sync.WaitGroup
}

var _ Scheduler = (*Local)(nil)

type planState struct {
	e        Entry
	run      RunFunc
	inc      *compiled
	full     *compiled
	gen      uint64 // bumped on Start/Stop, invalidating old timers
	stopped  bool
	paused   bool
	last     time.Time // last due time handled
	next     time.Time // next due time
	timer    Timer
	owedFull bool

	busy     bool // a run is waiting (pending) or running
	pending  *Run
	deferred Timer // set while pending waits for the window
	cancel   context.CancelFunc
	closeT   Timer
	lastDue  time.Time
}

// NewLocal returns an in-process Scheduler with no plans.
func NewLocal(opts *Options) *Local {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Clock == nil {
		o.Clock = SystemClock
	}
	if o.MaxParallel <= 0 {
		o.MaxParallel = DefaultMaxParallel
	}
	if o.MaxWait <= 0 {
		o.MaxWait = DefaultMaxWait
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Local{clock: o.Clock, max: o.MaxParallel, maxWait: o.MaxWait, onEvent: o.OnEvent, log: o.Logger, plans: map[string]*planState{}}
}

func (s *Local) emit(ev Event) {
	ev.At = s.clock.Now()
	lvl := slog.LevelInfo
	if ev.Kind == EventSkipped || ev.Kind == EventMissed || ev.Kind == EventOverrun || ev.Err != nil {
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, "schedule: "+string(ev.Kind), "plan", ev.PlanID, "due", ev.Due,
		"full", ev.Full, "catchUp", ev.CatchUp, "reason", string(ev.Reason), "err", ev.Err)
	if s.onEvent != nil {
		s.onEvent(ev)
	}
}

// nextDue is the first due time after t and whether it is a full one.
func (st *planState) nextDue(t time.Time) (time.Time, bool) {
	n := st.inc.next(t)
	if st.full == nil {
		return n, false
	}
	f := st.full.next(t)
	switch {
	case f.IsZero():
		return n, false
	case n.IsZero() || f.Before(n):
		return f, true
	default:
		return n, f.Equal(n)
	}
}

// Start implements Scheduler.
func (s *Local) Start(e Entry, run RunFunc) error {
	if err := e.Validate(); err != nil {
		return fmt.Errorf("schedule: start plan %q: %w", e.PlanID, err)
	}
	if run == nil {
		return fmt.Errorf("schedule: start plan %q: nil RunFunc", e.PlanID)
	}
	inc, _ := e.Incremental.compile()
	var full *compiled
	if e.Full != nil {
		full, _ = e.Full.compile()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	st := s.plans[e.PlanID]
	if st == nil {
		st = &planState{}
		s.plans[e.PlanID] = st
	} else {
		s.disarm(st, ReasonStopped)
	}
	st.gen++
	st.e, st.run, st.inc, st.full = e, run, inc, full
	st.stopped, st.paused = false, e.Paused
	now := s.clock.Now()
	st.last = now
	if !e.LastRun.IsZero() && e.LastRun.Before(now) {
		s.catchUp(st, now)
	}
	s.arm(st)
	return nil
}

// catchUp reports the due times in (LastRun, now] and makes one run.
func (s *Local) catchUp(st *planState, now time.Time) {
	var first, last time.Time
	n, anyFull := 0, false
	for t := st.e.LastRun; n < maxMissed; n++ {
		d, full := st.nextDue(t)
		if d.IsZero() || d.After(now) {
			break
		}
		if first.IsZero() {
			first = d
		}
		last, anyFull, t = d, anyFull || full, d
	}
	if n == 0 {
		return
	}
	s.emit(Event{PlanID: st.e.PlanID, Kind: EventMissed, Due: last, Full: anyFull, First: first, Missed: n})
	r := Run{PlanID: st.e.PlanID, Due: last, Full: anyFull, CatchUp: true}
	switch {
	case st.paused:
		s.skip(st, r, ReasonPaused)
	case st.busy:
		s.skip(st, r, ReasonBusy)
	case st.e.Window != nil && !st.e.Window.InWindow(now):
		s.skip(st, r, ReasonOutsideWindow)
	default:
		s.tryStart(st, r)
	}
}

func (s *Local) skip(st *planState, r Run, why Reason) {
	if r.Full {
		st.owedFull = true
	}
	s.emit(Event{PlanID: r.PlanID, Kind: EventSkipped, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp, Reason: why})
}

// arm sets the timer for the next due time after st.last.
func (s *Local) arm(st *planState) {
	st.next, _ = st.nextDue(st.last)
	if st.next.IsZero() {
		return
	}
	gen := st.gen
	d := min(st.next.Sub(s.clock.Now()), s.maxWait)
	st.timer = s.clock.AfterFunc(d, func() { s.fire(st, gen) })
}

// fire handles the due timer: re-arms if early, else handles every due
// time passed (all but the last are missed).
func (s *Local) fire(st *planState, gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.gen != gen || st.stopped || s.closed {
		return
	}
	now := s.clock.Now()
	if now.Before(st.next) {
		s.arm(st)
		return
	}
	var first, due time.Time
	n, full := 0, false
	for t := st.last; n < maxMissed; n++ {
		d, f := st.nextDue(t)
		if d.IsZero() || d.After(now) {
			break
		}
		if first.IsZero() {
			first = d
		}
		full = full || f
		due, t = d, d
	}
	if n > 1 {
		s.emit(Event{PlanID: st.e.PlanID, Kind: EventMissed, Due: due, Full: full, First: first, Missed: n - 1})
	}
	st.last = due
	s.due(st, Run{PlanID: st.e.PlanID, Due: due, Full: full})
	s.arm(st)
}

// due decides what to do with a run at its due time.
func (s *Local) due(st *planState, r Run) {
	now := s.clock.Now()
	switch w := st.e.Window; {
	case st.paused:
		s.skip(st, r, ReasonPaused)
	case w != nil && st.e.OutsideWindow == OutsideSkip && !w.InWindow(now):
		// Decided by the time alone, whether or not a run is going: a
		// due time at the very close of the window is outside it even
		// while the run it overran is still being stopped.
		s.skip(st, r, ReasonOutsideWindow)
	case st.pending != nil:
		s.skip(st, r, ReasonWaiting)
	case st.busy:
		s.skip(st, r, ReasonBusy)
	default:
		s.startOrWait(st, r, now)
	}
}

// startOrWait applies the window policy, then starts or queues r.
func (s *Local) startOrWait(st *planState, r Run, now time.Time) {
	w := st.e.Window
	if w != nil && !w.InWindow(now) {
		if st.e.OutsideWindow == OutsideSkip {
			st.busy, st.pending = false, nil
			s.skip(st, r, ReasonOutsideWindow)
			return
		}
		open := w.NextOpen(now)
		st.busy, st.pending = true, &r
		s.emit(Event{PlanID: r.PlanID, Kind: EventDeferred, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp, Until: open})
		gen, p := st.gen, st.pending
		st.deferred = s.clock.AfterFunc(open.Sub(now), func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if st.gen != gen || st.pending != p || s.closed {
				return
			}
			st.deferred, st.pending, st.busy = nil, nil, false
			if st.paused {
				s.skip(st, *p, ReasonPaused)
				return
			}
			s.startOrWait(st, *p, s.clock.Now())
		})
		return
	}
	s.tryStart(st, r)
}

// tryStart starts r if a slot is free, else queues it.
func (s *Local) tryStart(st *planState, r Run) {
	if s.running >= s.max {
		st.busy, st.pending = true, &r
		s.queue = append(s.queue, st)
		s.emit(Event{PlanID: r.PlanID, Kind: EventQueued, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp})
		return
	}
	s.launch(st, r)
}

func (s *Local) launch(st *planState, r Run) {
	if st.owedFull {
		r.Full, st.owedFull = true, false
	}
	ctx, cancelCause := context.WithCancelCause(context.Background())
	cancel := func() { cancelCause(nil) }
	st.busy, st.pending, st.cancel, st.lastDue = true, nil, cancel, r.Due
	s.running++
	s.wg.Add(1)
	s.emit(Event{PlanID: r.PlanID, Kind: EventStarted, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp})
	now := s.clock.Now()
	var closeT Timer
	if w := st.e.Window; w != nil {
		if end, ok := w.CloseAfter(now); ok {
			stop := st.e.Overrun != OverrunContinue
			closeT = s.clock.AfterFunc(end.Sub(now), func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				if st.closeT != closeT {
					return // that run is over
				}
				st.closeT = nil
				why := ReasonOverrunGoOn
				if stop {
					why = ReasonOverrunStop
					cancelCause(ErrWindowClosed)
				}
				s.emit(Event{PlanID: r.PlanID, Kind: EventOverrun, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp, Reason: why})
			})
			st.closeT = closeT
		}
	}
	fn := st.run
	go func() {
		defer s.wg.Done()
		err := fn(ctx, r)
		s.mu.Lock()
		defer s.mu.Unlock()
		cancel()
		if st.closeT == closeT && closeT != nil {
			closeT.Stop()
			st.closeT = nil
		}
		st.busy, st.cancel = false, nil
		s.running--
		s.emit(Event{PlanID: r.PlanID, Kind: EventFinished, Due: r.Due, Full: r.Full, CatchUp: r.CatchUp, Err: err})
		if st.stopped && s.plans[r.PlanID] == st {
			delete(s.plans, r.PlanID)
		}
		s.dispatch()
	}()
}

// dispatch starts queued runs while slots are free.
func (s *Local) dispatch() {
	for s.running < s.max && len(s.queue) > 0 && !s.closed {
		st := s.queue[0]
		s.queue = s.queue[1:]
		if st.pending == nil {
			continue // dropped by Stop, Pause or a new Start
		}
		r := *st.pending
		st.pending, st.busy = nil, false
		s.startOrWait(st, r, s.clock.Now())
	}
}

// disarm stops a plan's timers and drops its waiting run.
func (s *Local) disarm(st *planState, why Reason) {
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
	s.dropPending(st, why)
}

func (s *Local) dropPending(st *planState, why Reason) {
	if st.pending == nil {
		return
	}
	if st.deferred != nil {
		st.deferred.Stop()
		st.deferred = nil
	}
	s.queue = slices.DeleteFunc(s.queue, func(x *planState) bool { return x == st })
	r := *st.pending
	st.pending, st.busy = nil, false
	s.skip(st, r, why)
}

func (s *Local) plan(id string) (*planState, error) {
	if s.closed {
		return nil, ErrClosed
	}
	st := s.plans[id]
	if st == nil || st.stopped {
		return nil, fmt.Errorf("%w %q", ErrUnknownPlan, id)
	}
	return st, nil
}

// Stop implements Scheduler.
func (s *Local) Stop(planID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.plan(planID)
	if err != nil {
		return err
	}
	s.disarm(st, ReasonStopped)
	st.gen++
	st.stopped = true
	if !st.busy {
		delete(s.plans, planID)
	}
	return nil
}

// Pause implements Scheduler. A run waiting for its window or a slot is
// skipped (ReasonPaused); a run in progress goes on.
func (s *Local) Pause(planID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.plan(planID)
	if err != nil {
		return err
	}
	st.paused = true
	s.dropPending(st, ReasonPaused)
	return nil
}

// Resume implements Scheduler.
func (s *Local) Resume(planID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.plan(planID)
	if err != nil {
		return err
	}
	st.paused = false
	return nil
}

// Status implements Scheduler.
func (s *Local) Status(planID string) (Status, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := s.plan(planID)
	if err != nil {
		return Status{}, err
	}
	return Status{Next: st.next, Paused: st.paused, Running: st.cancel != nil, Waiting: st.pending != nil, LastDue: st.lastDue}, nil
}

// Close implements Scheduler.
func (s *Local) Close(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		for _, st := range s.plans {
			s.disarm(st, ReasonClosed)
			st.gen++
		}
		s.closed = true
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for _, st := range s.plans {
		if st.cancel != nil {
			st.cancel()
		}
	}
	s.mu.Unlock()
	<-done
	return ctx.Err()
}
