package schedule

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Window is the weekly set of time ranges in which a plan's runs may
// start (and, with OverrunStop, must finish). Ranges may overlap or abut;
// their union is the window, so "Mon–Fri 22:00–06:00" plus "Sat–Sun
// 00:00–24:00" is one window open from Friday 22:00 to Monday 06:00.
// Like Schedule, a Window is a plain value with pure methods.
type Window struct {
	Ranges []Range `json:"ranges"`
	// TZ is an IANA time zone name; empty means UTC.
	TZ string `json:"tz,omitempty"`
}

// Range is one daily time range on some weekdays. It opens at Start on
// each of Weekdays and closes at End; an End not after Start is on the
// next day ("22:00"–"06:00" on Fri closes Saturday 06:00): the weekday
// names the day the range starts. End may be "24:00". A range lasts from
// MinGap up to 24 hours ("00:00"–"24:00" is a whole day); Start == End is
// rejected as ambiguous.
type Range struct {
	Weekdays []Weekday `json:"weekdays"`
	Start    string    `json:"start"`
	End      string    `json:"end"`
}

// OutsideWindow is what happens to a run that is due while the window is
// closed. The decision is always reported as an event.
type OutsideWindow string

const (
	// OutsideWait holds the run until the window next opens, then starts
	// it (its Due stays the scheduled time). The default.
	OutsideWait OutsideWindow = "wait"
	// OutsideSkip drops the run, recorded as skipped.
	OutsideSkip OutsideWindow = "skip"
)

// Overrun is what happens to a run still going when its window closes.
type Overrun string

const (
	// OverrunStop cancels the run's context when the window closes; the
	// job stops, deletes its snapshot and partial data, and makes no
	// restore point (ACOS STOP_BACKUP). The default.
	OverrunStop Overrun = "stop"
	// OverrunContinue lets the run finish after the window closed
	// (ACOS KEEP_GO_ON).
	OverrunContinue Overrun = "continue"
)

// Validate checks an OutsideWindow value; "" (the default, wait) is valid.
func (o OutsideWindow) Validate() error {
	switch o {
	case "", OutsideWait, OutsideSkip:
		return nil
	}
	return &FieldError{Field: "outsideWindow", Rule: fmt.Sprintf("%q is unknown, must be wait or skip", string(o))}
}

// Validate checks an Overrun value; "" (the default, stop) is valid.
func (o Overrun) Validate() error {
	switch o {
	case "", OverrunStop, OverrunContinue:
		return nil
	}
	return &FieldError{Field: "overrun", Rule: fmt.Sprintf("%q is unknown, must be stop or continue", string(o))}
}

// Validate checks every field and returns each broken rule as a
// *FieldError, joined.
func (w Window) Validate() error {
	var p problems
	if _, err := LoadLocation(w.TZ); err != nil {
		p = append(p, err)
	}
	if len(w.Ranges) == 0 {
		p.add("ranges", "at least one range is required")
	}
	for i, r := range w.Ranges {
		f := fmt.Sprintf("ranges[%d]", i)
		if len(r.Weekdays) == 0 {
			p.add(f+".weekdays", "at least one weekday is required")
		}
		seen := map[Weekday]bool{}
		for j, d := range r.Weekdays {
			if d < 0 || d > 6 {
				p.add(fmt.Sprintf("%s.weekdays[%d]", f, j), "is %d, must be 0 (Sun)–6 (Sat)", int(d))
			} else if seen[d] {
				p.add(fmt.Sprintf("%s.weekdays[%d]", f, j), "%s is listed twice", d)
			}
			seen[d] = true
		}
		s, err1 := parseClock(r.Start, false)
		if err1 != nil {
			p.add(f+".start", "%v", err1)
		}
		e, err2 := parseClock(r.End, true)
		if err2 != nil {
			p.add(f+".end", "%v", err2)
		}
		if err1 == nil && err2 == nil {
			if s == e {
				p.add(f+".end", "equals start %s: a range must be 15 minutes to 24 hours (use 00:00–24:00 for a whole day)", r.Start)
			} else if l := rangeLen(s, e); l < int(MinGap/time.Minute) {
				p.add(f+".end", "range %s–%s lasts %d minutes, must be at least %d", r.Start, r.End, l, int(MinGap/time.Minute))
			}
		}
	}
	return errors.Join(p...)
}

// rangeLen is a range's length in minutes of wall clock.
func rangeLen(s, e int) int {
	if e > s {
		return e - s
	}
	return e + 1440 - s
}

// interval is one opening of a window: [open, close).
type interval struct{ open, close time.Time }

// intervals returns the merged openings of the window that touch the
// local dates from-1 .. to+1, sorted. Wall times are resolved by the DST
// rule of the package doc. Invalid windows have none.
func (w Window) intervals(from, to time.Time) []interval {
	if w.Validate() != nil {
		return nil
	}
	loc, _ := LoadLocation(w.TZ)
	fy, fm, fd := from.In(loc).Date()
	ty, tm, td := to.In(loc).Date()
	last := time.Date(ty, tm, td+1, 0, 0, 0, 0, time.UTC)
	var iv []interval
	for day := time.Date(fy, fm, fd-1, 0, 0, 0, 0, time.UTC); !day.After(last); day = day.AddDate(0, 0, 1) {
		y, m, d := day.Date()
		for _, r := range w.Ranges {
			if !slices.Contains(r.Weekdays, Weekday(day.Weekday())) {
				continue
			}
			s, _ := parseClock(r.Start, false)
			e, _ := parseClock(r.End, true)
			ed := d
			if e <= s {
				ed++
			}
			open := resolve(y, m, d, s/60, s%60, loc)
			close := resolve(y, m, ed, e/60, e%60, loc) // 24:00 normalises to the next day
			if close.After(open) {
				iv = append(iv, interval{open, close})
			}
		}
	}
	slices.SortFunc(iv, func(a, b interval) int { return a.open.Compare(b.open) })
	var merged []interval
	for _, x := range iv {
		if n := len(merged); n > 0 && !x.open.After(merged[n-1].close) {
			if x.close.After(merged[n-1].close) {
				merged[n-1].close = x.close
			}
			continue
		}
		merged = append(merged, x)
	}
	return merged
}

// InWindow reports whether t is inside the window: at or after an
// opening and before its close. An invalid window contains no time.
func (w Window) InWindow(t time.Time) bool {
	for _, x := range w.intervals(t, t) {
		if !t.Before(x.open) && t.Before(x.close) {
			return true
		}
	}
	return false
}

// NextOpen returns t if t is inside the window, else the next instant the
// window opens; the zero Time for an invalid window.
func (w Window) NextOpen(t time.Time) time.Time {
	for _, x := range w.intervals(t, t.AddDate(0, 0, 8)) {
		if t.Before(x.close) {
			if t.Before(x.open) {
				return x.open
			}
			return t
		}
	}
	return time.Time{}
}

// CloseAfter returns when the opening of the window that contains t
// closes, and true; false if t is outside the window or the window never
// closes (every day covered 00:00–24:00 without a gap).
func (w Window) CloseAfter(t time.Time) (time.Time, bool) {
	iv := w.intervals(t, t.AddDate(0, 0, 8))
	for i, x := range iv {
		if !t.Before(x.open) && t.Before(x.close) {
			if i == len(iv)-1 {
				// The opening reaches the end of the horizon: a week
				// with no gap never closes.
				return time.Time{}, false
			}
			return x.close, true
		}
	}
	return time.Time{}, false
}

// Covers reports whether the local wall-clock time minute (minutes after
// midnight) on weekday day is inside the window, ignoring DST: the weekly
// calendar view used to check that a schedule's times fall inside.
func (w Window) Covers(day time.Weekday, minute int) bool {
	at := int(day)*1440 + minute
	for _, r := range w.Ranges {
		s, err1 := parseClock(r.Start, false)
		e, err2 := parseClock(r.End, true)
		if err1 != nil || err2 != nil || s == e {
			continue
		}
		l := rangeLen(s, e)
		for _, d := range r.Weekdays {
			open := int(d)*1440 + s
			if off := ((at-open)%10080 + 10080) % 10080; off < l {
				return true
			}
		}
	}
	return false
}

// CheckWindow reports the schedule's times that fall outside w, as
// *FieldErrors on the schedule's fields, joined. For kinds with times of
// day (days, weekly, monthly) every time on every weekday it may run must
// be inside; for minutes, hours and cron at least one run of the week
// must be (the window then limits which of them start). Both s and w
// should be valid; the check compares wall clocks, so it assumes both
// share a zone (a mismatch is reported on tz).
func (s Schedule) CheckWindow(w Window) error {
	if s.Validate() != nil || w.Validate() != nil {
		return nil
	}
	var p problems
	sl, _ := LoadLocation(s.TZ)
	wl, _ := LoadLocation(w.TZ)
	if sl.String() != wl.String() {
		p.add("tz", "is %q but the window's is %q: they must be the same zone", s.TZ, w.TZ)
		return errors.Join(p...)
	}
	c, _ := s.compile()
	switch s.Kind {
	case KindDays, KindWeekly, KindMonthly:
		days := []time.Weekday{0, 1, 2, 3, 4, 5, 6}
		if s.Kind == KindWeekly {
			days = days[:0]
			for _, d := range s.Weekdays {
				days = append(days, time.Weekday(d))
			}
			slices.Sort(days)
		}
		for i, t := range s.Times {
			m, _ := ParseClock(t)
			var out []string
			for _, d := range days {
				if !w.Covers(d, m) {
					out = append(out, Weekday(d).String())
				}
			}
			if len(out) > 0 {
				p.add(fmt.Sprintf("times[%d]", i), "%s on %v is outside the window", t, out)
			}
		}
	default:
		for d := time.Weekday(0); d < 7; d++ {
			for _, m := range c.times {
				if w.Covers(d, m) && (s.Kind != KindCron || c.spec.Dow&(1<<uint(d)) != 0 || c.spec.Dom&starBit == 0) {
					return nil
				}
			}
		}
		field := "every"
		if s.Kind == KindCron {
			field = "cron"
		}
		p.add(field, "no scheduled time falls inside the window")
	}
	return errors.Join(p...)
}
