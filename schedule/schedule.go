package schedule

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Kind names how a Schedule repeats. Its JSON form is the string value.
type Kind string

// The kinds of schedule, after the ACOS backup service (MINUTELY, HOURLY,
// DAILY, WEEKLY, MONTHLY) plus a cron expression.
const (
	// KindMinutes runs every Every minutes (15–59), counted from 00:00 of
	// each local day: Every=20 runs at 00:00, 00:20, 00:40, 01:00, ...,
	// 23:40, then 00:00 of the next day.
	KindMinutes Kind = "minutes"
	// KindHours runs every Every hours (1–23), counted from 00:00 of each
	// local day: Every=5 runs at 00:00, 05:00, 10:00, 15:00, 20:00.
	KindHours Kind = "hours"
	// KindDays runs every Every days (1–365) at each of Times. Days are
	// counted from StartDate (default 1970-01-01): a day runs when the
	// number of local days since StartDate is a multiple of Every; no day
	// before StartDate runs.
	KindDays Kind = "days"
	// KindWeekly runs at each of Times on each of Weekdays.
	KindWeekly Kind = "weekly"
	// KindMonthly runs at each of Times on each of Days of the month and,
	// if LastDay, on the month's last day. A date the month lacks (31 in
	// April, 30 in February) does not run in that month: it is not moved
	// to the last day, as in cron. Set LastDay for "the end of every month".
	KindMonthly Kind = "monthly"
	// KindCron runs at the times of Cron, a standard 5-field expression
	// (minute hour day-of-month month day-of-week, names and ranges
	// allowed, as in crontab(5); when both day fields are restricted a day
	// matching either runs). Descriptors (@daily, ...) other than @every
	// are accepted.
	KindCron Kind = "cron"
)

// Ranges of the ACOS schedule kinds, enforced by Validate.
const (
	MinEveryMinutes = 15
	MaxEveryMinutes = 59
	MinEveryHours   = 1
	MaxEveryHours   = 23
	MinEveryDays    = 1
	MaxEveryDays    = 365
	// MinGap is the least distance between two times of one day, and the
	// shortest window range.
	MinGap = 15 * time.Minute
)

// Weekday is a day of the week whose JSON form is its three-letter English
// name ("Mon"), so plans stay readable.
type Weekday time.Weekday

// The days of the week.
const (
	Sunday Weekday = iota
	Monday
	Tuesday
	Wednesday
	Thursday
	Friday
	Saturday
)

var dayNames = [7]string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}

// String returns the three-letter name, or "Weekday(n)" when out of range.
func (d Weekday) String() string {
	if d < 0 || d > 6 {
		return "Weekday(" + strconv.Itoa(int(d)) + ")"
	}
	return dayNames[d]
}

// MarshalText encodes the day as its three-letter name.
func (d Weekday) MarshalText() ([]byte, error) {
	if d < 0 || d > 6 {
		return nil, fmt.Errorf("schedule: weekday %d out of range", int(d))
	}
	return []byte(dayNames[d]), nil
}

// UnmarshalText accepts a three-letter or full English day name, any case.
func (d *Weekday) UnmarshalText(b []byte) error {
	s := strings.ToLower(string(b))
	for i, n := range dayNames {
		full := strings.ToLower(time.Weekday(i).String())
		if s == strings.ToLower(n) || s == full {
			*d = Weekday(i)
			return nil
		}
	}
	return fmt.Errorf("schedule: unknown weekday %q", string(b))
}

// Schedule says when a plan runs by itself. The zero value is invalid;
// Validate says why. A Schedule is a plain value: it serialises to JSON
// and back unchanged, and Next is a pure function of it and a time.
//
// Which fields a Kind uses: Every (minutes, hours, days), Times (days,
// weekly, monthly), StartDate (days), Weekdays (weekly), Days and LastDay
// (monthly), Cron (cron). A field that the kind does not use must be
// empty, so a mistyped plan is rejected rather than half-applied. TZ is
// used by all kinds.
type Schedule struct {
	Kind  Kind `json:"kind"`
	Every int  `json:"every,omitempty"`
	// Times are local times of day, "HH:MM" (00:00–23:59), at least
	// MinGap apart.
	Times []string `json:"times,omitempty"`
	// StartDate ("YYYY-MM-DD") anchors the day count of KindDays.
	StartDate string    `json:"startDate,omitempty"`
	Weekdays  []Weekday `json:"weekdays,omitempty"`
	// Days are days of the month, 1–31.
	Days    []int  `json:"days,omitempty"`
	LastDay bool   `json:"lastDay,omitempty"`
	Cron    string `json:"cron,omitempty"`
	// TZ is an IANA time zone name ("Europe/Berlin"); empty means UTC.
	// All times of the schedule are wall-clock times in this zone.
	TZ string `json:"tz,omitempty"`
}

// FieldError is one rule a Schedule or Window breaks. Validate returns
// all of them joined (errors.Join), so callers can list every problem;
// errors.As finds the first.
type FieldError struct {
	// Field is the JSON path of the field inside the value validated,
	// like "times[1]" or "ranges[0].end".
	Field string
	// Rule says what is wrong, naming the allowed range.
	Rule string
}

// Error returns "schedule: <field>: <rule>".
func (e *FieldError) Error() string { return "schedule: " + e.Field + ": " + e.Rule }

type problems []error

func (p *problems) add(field, format string, args ...any) {
	*p = append(*p, &FieldError{Field: field, Rule: fmt.Sprintf(format, args...)})
}

// locations caches loaded zones: time.LoadLocation reads the zone file
// on every call.
var locations sync.Map

// LoadLocation returns the zone named tz; "" is UTC. It wraps
// time.LoadLocation with the field name for errors.
func LoadLocation(tz string) (*time.Location, error) {
	if tz == "" {
		return time.UTC, nil
	}
	if l, ok := locations.Load(tz); ok {
		return l.(*time.Location), nil
	}
	loc, err := time.LoadLocation(tz)
	if err == nil {
		locations.Store(tz, loc)
	}
	if err != nil {
		return nil, &FieldError{Field: "tz", Rule: fmt.Sprintf("unknown time zone %q", tz)}
	}
	return loc, nil
}

func isDigits(s string) bool {
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// ParseClock parses "HH:MM" (00:00–23:59) into minutes after midnight.
func ParseClock(s string) (int, error) { return parseClock(s, false) }

func parseClock(s string, allow24 bool) (int, error) {
	if len(s) != 5 || s[2] != ':' || !isDigits(s[:2]) || !isDigits(s[3:]) {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	h, err1 := strconv.Atoi(s[:2])
	m, err2 := strconv.Atoi(s[3:])
	if err1 != nil || err2 != nil || h < 0 || m < 0 || m > 59 {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	if allow24 && h == 24 && m == 0 {
		return 1440, nil
	}
	if h > 23 {
		return 0, fmt.Errorf("%q is not a time of day (00:00–23:59)", s)
	}
	return h*60 + m, nil
}

var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// parseCron returns the bit sets of a 5-field expression.
func parseCron(expr string) (*cron.SpecSchedule, error) {
	e := strings.TrimSpace(expr)
	if strings.HasPrefix(e, "TZ=") || strings.HasPrefix(e, "CRON_TZ=") {
		return nil, errors.New("must not name a time zone: set tz instead")
	}
	if strings.HasPrefix(e, "@every") {
		return nil, errors.New("@every is not supported: use kind minutes or hours")
	}
	s, err := cronParser.Parse(e)
	if err != nil {
		return nil, fmt.Errorf("not a 5-field cron expression: %v", err)
	}
	spec, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, errors.New("not a 5-field cron expression")
	}
	return spec, nil
}

// Validate checks every field and returns each broken rule as a
// *FieldError, joined; nil means Next is well defined.
func (s Schedule) Validate() error { return s.validate(true) }

// validate checks s; deep also rejects cron expressions that match no
// date (a scan of 29 years, too slow for every Next).
func (s Schedule) validate(deep bool) error {
	var p problems
	if _, err := LoadLocation(s.TZ); err != nil {
		p = append(p, err)
	}
	uses := map[string]bool{}
	switch s.Kind {
	case KindMinutes:
		uses["every"] = true
		if s.Every < MinEveryMinutes || s.Every > MaxEveryMinutes {
			p.add("every", "is %d, must be %d–%d minutes", s.Every, MinEveryMinutes, MaxEveryMinutes)
		}
	case KindHours:
		uses["every"] = true
		if s.Every < MinEveryHours || s.Every > MaxEveryHours {
			p.add("every", "is %d, must be %d–%d hours", s.Every, MinEveryHours, MaxEveryHours)
		}
	case KindDays:
		uses["every"], uses["times"], uses["startDate"] = true, true, true
		if s.Every < MinEveryDays || s.Every > MaxEveryDays {
			p.add("every", "is %d, must be %d–%d days", s.Every, MinEveryDays, MaxEveryDays)
		}
		if s.StartDate != "" {
			if _, err := time.Parse(time.DateOnly, s.StartDate); err != nil {
				p.add("startDate", "%q is not a date YYYY-MM-DD", s.StartDate)
			}
		}
	case KindWeekly:
		uses["times"], uses["weekdays"] = true, true
		if len(s.Weekdays) == 0 {
			p.add("weekdays", "at least one weekday is required")
		}
		seen := map[Weekday]bool{}
		for i, d := range s.Weekdays {
			if d < 0 || d > 6 {
				p.add(fmt.Sprintf("weekdays[%d]", i), "is %d, must be 0 (Sun)–6 (Sat)", int(d))
			} else if seen[d] {
				p.add(fmt.Sprintf("weekdays[%d]", i), "%s is listed twice", d)
			}
			seen[d] = true
		}
	case KindMonthly:
		uses["times"], uses["days"], uses["lastDay"] = true, true, true
		if len(s.Days) == 0 && !s.LastDay {
			p.add("days", "at least one day of the month (or lastDay) is required")
		}
		seen := map[int]bool{}
		for i, d := range s.Days {
			if d < 1 || d > 31 {
				p.add(fmt.Sprintf("days[%d]", i), "is %d, must be 1–31", d)
			} else if seen[d] {
				p.add(fmt.Sprintf("days[%d]", i), "%d is listed twice", d)
			}
			seen[d] = true
		}
	case KindCron:
		uses["cron"] = true
		if spec, err := parseCron(s.Cron); err != nil {
			p.add("cron", "%v", err)
		} else if deep && !cronEverFires(spec) {
			p.add("cron", "%q matches no date", s.Cron)
		}
	case "":
		p.add("kind", "is required (minutes, hours, days, weekly, monthly or cron)")
	default:
		p.add("kind", "%q is unknown, must be minutes, hours, days, weekly, monthly or cron", string(s.Kind))
	}
	if uses["times"] {
		if len(s.Times) == 0 {
			p.add("times", "at least one time of day HH:MM is required")
		}
		var mins []int
		for i, t := range s.Times {
			m, err := ParseClock(t)
			if err != nil {
				p.add(fmt.Sprintf("times[%d]", i), "%v", err)
				continue
			}
			mins = append(mins, m)
		}
		if len(mins) == len(s.Times) {
			order := make([]int, len(mins))
			for i := range order {
				order[i] = i
			}
			slices.SortStableFunc(order, func(a, b int) int { return mins[a] - mins[b] })
			for k := 1; k < len(order); k++ {
				i, prev := order[k], order[k-1]
				if gap := mins[i] - mins[prev]; gap < int(MinGap/time.Minute) {
					p.add(fmt.Sprintf("times[%d]", i), "%s is %d minutes after times[%d] %s, must be at least %d apart",
						s.Times[i], gap, prev, s.Times[prev], int(MinGap/time.Minute))
				}
			}
		}
	}
	if s.Kind != "" && (s.Kind == KindMinutes || s.Kind == KindHours || s.Kind == KindDays || s.Kind == KindWeekly || s.Kind == KindMonthly || s.Kind == KindCron) {
		unused := func(name string, set bool) {
			if set && !uses[name] {
				p.add(name, "is not used by kind %s and must be empty", s.Kind)
			}
		}
		unused("every", s.Every != 0)
		unused("times", len(s.Times) > 0)
		unused("startDate", s.StartDate != "")
		unused("weekdays", len(s.Weekdays) > 0)
		unused("days", len(s.Days) > 0)
		unused("lastDay", s.LastDay)
		unused("cron", s.Cron != "")
	}
	return errors.Join(p...)
}

// cronEverFires reports whether some month has a day the expression
// matches (it rejects "0 0 30 2 *").
func cronEverFires(spec *cron.SpecSchedule) bool {
	if spec.Minute&^starBit == 0 || spec.Hour&^starBit == 0 {
		return false
	}
	// Every (month, day-of-month, weekday) combination occurs within 28
	// years, so scan 2000–2028 by date.
	for d := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() < 2029; d = d.AddDate(0, 0, 1) {
		if cronDay(spec, d.Year(), d.Month(), d.Day(), d.Weekday()) {
			return true
		}
	}
	return false
}

const starBit = 1 << 63

// cronDay reports whether the expression runs on a date, with cron's rule
// for the two day fields: if either is unrestricted ("*") both must match,
// otherwise either may.
func cronDay(spec *cron.SpecSchedule, y int, m time.Month, d int, wd time.Weekday) bool {
	if spec.Month&(1<<uint(m)) == 0 {
		return false
	}
	dom := spec.Dom&(1<<uint(d)) != 0
	dow := spec.Dow&(1<<uint(wd)) != 0
	if spec.Dom&starBit != 0 || spec.Dow&starBit != 0 {
		return dom && dow
	}
	return dom || dow
}

// compiled is a validated Schedule ready for Next.
type compiled struct {
	s     Schedule
	loc   *time.Location
	times []int // sorted minutes of day
	start int64 // KindDays: civil day number of StartDate
	spec  *cron.SpecSchedule
	days  [32]bool
}

func (s Schedule) compile() (*compiled, error) {
	if err := s.validate(false); err != nil {
		return nil, err
	}
	c := &compiled{s: s}
	c.loc, _ = LoadLocation(s.TZ)
	switch s.Kind {
	case KindMinutes:
		for m := 0; m < 1440; m += s.Every {
			c.times = append(c.times, m)
		}
	case KindHours:
		for h := 0; h < 24; h += s.Every {
			c.times = append(c.times, h*60)
		}
	case KindCron:
		c.spec, _ = parseCron(s.Cron)
		for h := 0; h < 24; h++ {
			for m := 0; m < 60; m++ {
				if c.spec.Hour&(1<<uint(h)) != 0 && c.spec.Minute&(1<<uint(m)) != 0 {
					c.times = append(c.times, h*60+m)
				}
			}
		}
	default:
		for _, t := range s.Times {
			m, _ := ParseClock(t)
			c.times = append(c.times, m)
		}
		slices.Sort(c.times)
	}
	if s.StartDate != "" {
		d, _ := time.Parse(time.DateOnly, s.StartDate)
		c.start = civilDay(d.Year(), d.Month(), d.Day())
	}
	for _, d := range s.Days {
		c.days[d] = true
	}
	return c, nil
}

// civilDay numbers dates: days since 1970-01-01.
func civilDay(y int, m time.Month, d int) int64 {
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400
}

// runsOn reports whether the schedule has times on a local date.
func (c *compiled) runsOn(y int, m time.Month, d int) bool {
	wd := time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Weekday()
	switch c.s.Kind {
	case KindMinutes, KindHours:
		return true
	case KindDays:
		n := civilDay(y, m, d) - c.start
		return n >= 0 && n%int64(c.s.Every) == 0
	case KindWeekly:
		return slices.Contains(c.s.Weekdays, Weekday(wd))
	case KindMonthly:
		last := time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
		return c.days[d] || (c.s.LastDay && d == last)
	case KindCron:
		return cronDay(c.spec, y, m, d, wd)
	}
	return false
}

// maxSearchDays bounds Next's search: a valid schedule runs at least once
// in 8 years (a cron on 29 February may skip 2100).
const maxSearchDays = 366 * 9

// Next returns the first run strictly after the instant after, or the
// zero Time if the schedule is invalid or never runs again. It is a pure
// function of s and after; the result is in the schedule's zone.
//
// Wall-clock times are turned into instants by the rule of the package
// doc: a time that does not exist (skipped by a DST change) runs at the
// first instant after the gap; a time that exists twice runs once, at its
// first occurrence.
func (s Schedule) Next(after time.Time) time.Time {
	c, err := s.compile()
	if err != nil {
		return time.Time{}
	}
	return c.next(after)
}

func (c *compiled) next(after time.Time) time.Time {
	// A wall time w resolves to an instant whose wall clock is in
	// [w, w+gap]; wall clocks move back at most by a fall-back shift. With
	// both bounded by 3 hours, wall times earlier than after's wall clock
	// minus 6 hours resolve to instants before after.
	al := after.In(c.loc)
	aw := wallUnix(al)
	floor := aw - 6*3600
	if zs, ze := al.ZoneBounds(); (zs.IsZero() || al.Sub(zs) > 6*time.Hour) && (ze.IsZero() || ze.Sub(al) > 6*time.Hour) {
		// No zone change within 6 hours: wall times up to after's own
		// resolve to instants up to after.
		floor = aw + 1
	}
	day := time.Unix(floor, 0).UTC()
	y, m, d := day.Date()
	for i := 0; i < maxSearchDays; i++ {
		date := time.Date(y, m, d+i, 0, 0, 0, 0, time.UTC)
		dy, dm, dd := date.Date()
		if !c.runsOn(dy, dm, dd) {
			continue
		}
		base := date.Unix()
		for _, t := range c.times {
			w := base + int64(t)*60
			if w < floor {
				continue
			}
			if u := resolve(dy, dm, dd, t/60, t%60, c.loc); u.After(after) {
				return u
			}
		}
	}
	return time.Time{}
}

// wallUnix is the wall clock of u in its zone, as seconds since the epoch
// of a clock without zones.
func wallUnix(u time.Time) int64 {
	_, off := u.Zone()
	return u.Unix() + int64(off)
}

// resolve turns a wall-clock time into an instant by the package's DST
// rule: the first instant with that wall clock or, if none exists, the
// first instant after the gap.
func resolve(y int, mo time.Month, d, hh, mm int, loc *time.Location) time.Time {
	t := time.Date(y, mo, d, hh, mm, 0, 0, loc)
	if loc == time.UTC {
		return t
	}
	w := time.Date(y, mo, d, hh, mm, 0, 0, time.UTC).Unix()
	start, end := t.ZoneBounds()
	// Far from a zone change (shifts are at most 3 hours) the wall clock
	// is unique.
	if wallUnix(t) == w && (start.IsZero() || t.Sub(start) > 3*time.Hour) && (end.IsZero() || end.Sub(t) > 3*time.Hour) {
		return t
	}
	probes := []time.Time{t}
	if !start.IsZero() {
		probes = append(probes, start.Add(-time.Second))
	}
	if !end.IsZero() {
		probes = append(probes, end)
	}
	var best time.Time
	for _, p := range probes {
		_, off := p.Zone()
		u := time.Unix(w-int64(off), 0).In(loc)
		if wallUnix(u) == w && (best.IsZero() || u.Before(best)) {
			best = u
		}
	}
	if !best.IsZero() {
		return best
	}
	for _, b := range []time.Time{start, end} {
		if !b.IsZero() && wallUnix(b.Add(-time.Second).In(loc)) < w && wallUnix(b.In(loc)) > w {
			return b.In(loc)
		}
	}
	return t
}
