package schedule

import (
	"slices"
	"sync"
	"time"
)

// Clock is the Scheduler's source of time: the current instant and
// timers. Production code uses SystemClock; tests use a FakeClock so that
// days pass in microseconds and timers fire in a known order.
type Clock interface {
	// Now returns the current instant.
	Now() time.Time
	// AfterFunc calls f in its own goroutine (or, for a FakeClock, inside
	// Advance) once d has passed, unless the Timer is stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending call of Clock.AfterFunc.
type Timer interface {
	// Stop prevents the call if it has not started; it reports whether it
	// did. A call already started is not waited for.
	Stop() bool
}

// SystemClock is the Clock of the time package.
var SystemClock Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }
func (systemClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(d, f)
}

// FakeClock is a Clock that moves only when told. Timers fire inside
// Advance and AdvanceTo, synchronously and in order of their deadline
// (ties in the order they were set), with Now equal to each timer's
// deadline while it runs; a timer set by a firing callback fires in the
// same Advance if it is due by the target. It is safe for concurrent use.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	seq    uint64
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *FakeClock
	when time.Time
	seq  uint64
	f    func()
}

// NewFakeClock returns a FakeClock showing t0.
func NewFakeClock(t0 time.Time) *FakeClock { return &FakeClock{now: t0} }

// Now returns the clock's current instant.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc sets a timer for f at Now()+d; d ≤ 0 fires in the next
// Advance (even Advance(0)).
func (c *FakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	t := &fakeTimer{c: c, when: c.now.Add(max(d, 0)), seq: c.seq, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	i := slices.Index(t.c.timers, t)
	if i < 0 {
		return false
	}
	t.c.timers = slices.Delete(t.c.timers, i, i+1)
	return true
}

// Advance moves the clock forward by d, firing every timer due on the way.
func (c *FakeClock) Advance(d time.Duration) { c.AdvanceTo(c.Now().Add(d)) }

// AdvanceTo moves the clock to t (never backwards), firing every timer
// due by t in order.
func (c *FakeClock) AdvanceTo(t time.Time) {
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, x := range c.timers {
			if !x.when.After(t) && (next == nil || x.when.Before(next.when) || (x.when.Equal(next.when) && x.seq < next.seq)) {
				next = x
			}
		}
		if next == nil {
			if t.After(c.now) {
				c.now = t
			}
			c.mu.Unlock()
			return
		}
		c.timers = slices.DeleteFunc(c.timers, func(x *fakeTimer) bool { return x == next })
		if next.when.After(c.now) {
			c.now = next.when
		}
		c.mu.Unlock()
		next.f()
	}
}

// Timers returns how many timers are set and not yet fired.
func (c *FakeClock) Timers() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}
