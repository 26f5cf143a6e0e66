// Package retention decides which restore points to keep and which to
// forget, with a reason for every point kept. It is pure: Apply is a
// function of the points, the policy and the current time, and touches no
// storage; the caller deletes what it says to forget (and runs garbage
// collection afterwards).
//
// # Terms
//
//   - Point: one restore point of one VM, as retention sees it: its id, its
//     VM, when it was made, and whether it was made by hand.
//   - Rule: one part of a Policy. KeepLast keeps the N newest points.
//     KeepWithin keeps points made less than a duration before now.
//     KeepForever keeps everything. The GFS rules (grandfather-father-son)
//     Hourly, Daily, Weekly, Monthly and Yearly keep, for each of the last
//     N calendar buckets (hours, days, ISO 8601 weeks, months, years) that
//     hold points, the newest point in that bucket.
//   - Bucket: a calendar period in the policy's Location, named in reasons
//     as "2026-11-24 13:00 +01:00" (hour, with its UTC offset so the two
//     02:00 hours of a DST fall-back night are two buckets), "2026-11-24"
//     (day), "2026-W48" (ISO week, Monday to Sunday; week 1 may start in
//     December), "2026-11" (month) or "2026" (year).
//
// # Semantics
//
// The rules are those of restic's forget --keep-* options, also used by
// Proxmox Backup Server's prune with one difference noted below:
//
//   - Every VM is handled on its own (points are grouped by VMID), and the
//     newest point of every VM is always kept ("newest of VM"), so that
//     retention never leaves a VM without a restore point.
//   - A point is kept if any rule keeps it, and each rule counts on its own:
//     with KeepLast 3 and Daily 7, today's newest point counts both as one
//     of the last 3 and as today's daily point. (Proxmox instead skips
//     buckets already covered by a point an earlier rule kept, so there the
//     rules add up: the last 3 points plus 7 older days.)
//   - GFS counts buckets that hold points, newest first, not calendar
//     periods: Daily 7 with a VM backed up on weekdays only keeps the last
//     7 weekdays with a backup. Restic additionally keeps the oldest point
//     when a GFS rule finds fewer buckets than its count; this package does
//     not, so a young VM keeps exactly the buckets it has.
//   - KeepWithin counts back from now, the time passed to Apply, not from
//     the newest point as restic does: a policy of "keep 7 days" means
//     7 days of wall-clock time, as the ACOS "time" retention type does.
//     Retention runs after a successful backup, when the two agree; if
//     backups stop, "newest of VM" still keeps one point. A point at exactly
//     now-KeepWithin, and any point dated after now, is within.
//   - Points made by hand (Manual) are kept ("manual") and do not take part
//     in the rules, so a manual backup never pushes a scheduled one out of
//     KeepLast or a bucket. With ForgetManual they are ordinary points.
//   - Calendar buckets use Location, the plan's time zone (nil means UTC),
//     so "daily" means the plan's local days, DST included: a 23- or 25-hour
//     day is still one bucket.
//
// Every restore point is self-contained, so forgetting any point never
// breaks another: no rule needs to keep a full backup for its incrementals.
//
// # Policies
//
// A Policy must set at least one rule: the zero Policy is invalid rather
// than silently keeping everything (or nothing); set KeepForever to keep
// every point. KeepForever cannot be combined with other rules. Counts and
// durations must not be negative, and 0 means the rule is not used (ACOS:
// a retention value must be positive where one is set).
package retention

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrInvalidPolicy is wrapped by every error of Validate (and of Apply for a
// bad policy).
var ErrInvalidPolicy = errors.New("retention: invalid policy")

// PolicyError is one rule a Policy breaks. Validate returns one per problem,
// joined with errors.Join; errors.As finds the first.
type PolicyError struct {
	// Field is the Policy field at fault ("KeepLast", "Daily", ...), or ""
	// for the policy as a whole.
	Field string
	// Rule says what is wrong and what is allowed.
	Rule string
}

// Error returns "retention: <Field>: <Rule>".
func (e *PolicyError) Error() string {
	if e.Field == "" {
		return "retention: " + e.Rule
	}
	return "retention: " + e.Field + ": " + e.Rule
}

// Is reports whether target is ErrInvalidPolicy.
func (e *PolicyError) Is(target error) bool { return target == ErrInvalidPolicy }

// Policy says which restore points of each VM to keep. The zero value sets
// no rule and is invalid. Counts and durations of 0 mean the rule is unused.
type Policy struct {
	// KeepLast keeps the N newest points.
	KeepLast int
	// KeepWithin keeps points made less than this long before now.
	KeepWithin time.Duration
	// KeepForever keeps every point; no other rule may be set with it.
	KeepForever bool

	// Hourly, Daily, Weekly, Monthly and Yearly keep the newest point of
	// each of the last N hours, days, ISO weeks, months and years that
	// hold points (GFS).
	Hourly  int
	Daily   int
	Weekly  int
	Monthly int
	Yearly  int

	// Location is the time zone of the calendar buckets (the plan's zone);
	// nil means UTC.
	Location *time.Location

	// ForgetManual makes points made by hand subject to the rules; by
	// default they are always kept.
	ForgetManual bool
}

// Validate reports every way p is unusable, each as a *PolicyError wrapping
// ErrInvalidPolicy, joined; nil if p is valid.
func (p Policy) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, &PolicyError{Field: field, Rule: fmt.Sprintf(format, args...)})
	}
	for _, c := range p.counts() {
		if c.n < 0 {
			add(c.field, "is %d, must be > 0 (or 0 for unused)", c.n)
		}
	}
	if p.KeepWithin < 0 {
		add("KeepWithin", "is %s, must be > 0 (or 0 for unused)", p.KeepWithin)
	}
	switch rules := p.hasRule(); {
	case p.KeepForever && rules:
		add("KeepForever", "cannot be combined with other rules")
	case !p.KeepForever && !rules:
		add("", "no rule: set KeepLast, KeepWithin, a GFS count (Hourly, Daily, Weekly, Monthly, Yearly) or KeepForever")
	}
	return errors.Join(errs...)
}

type count struct {
	field string
	n     int
}

func (p Policy) counts() []count {
	return []count{{"KeepLast", p.KeepLast}, {"Hourly", p.Hourly}, {"Daily", p.Daily}, {"Weekly", p.Weekly}, {"Monthly", p.Monthly}, {"Yearly", p.Yearly}}
}

// hasRule reports whether any rule other than KeepForever is set (> 0).
func (p Policy) hasRule() bool {
	if p.KeepWithin > 0 {
		return true
	}
	for _, c := range p.counts() {
		if c.n > 0 {
			return true
		}
	}
	return false
}

// String describes p for logs and dry runs, e.g.
// "last 7, within 7d, daily 7, weekly 4 (Europe/Berlin)" or "forever (UTC)".
func (p Policy) String() string {
	var parts []string
	if p.KeepForever {
		parts = append(parts, "forever")
	}
	if p.KeepLast > 0 {
		parts = append(parts, fmt.Sprintf("last %d", p.KeepLast))
	}
	if p.KeepWithin > 0 {
		parts = append(parts, "within "+formatDuration(p.KeepWithin))
	}
	for _, r := range gfsRules {
		if n := r.count(p); n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r.name, n))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no rule")
	}
	s := strings.Join(parts, ", ")
	if p.ForgetManual {
		s += ", forget manual"
	}
	return s + " (" + p.location().String() + ")"
}

func (p Policy) location() *time.Location {
	if p.Location == nil {
		return time.UTC
	}
	return p.Location
}

// Point is one restore point as retention sees it.
type Point struct {
	// ID names the point (the repository's restore point id).
	ID string
	// VMID is the VM the point belongs to; points are grouped by it.
	VMID string
	// Time is when the point was made.
	Time time.Time
	// Manual is set for points made by hand rather than by a schedule.
	Manual bool
}

// Decision is what Apply decided for one point.
type Decision struct {
	Point Point
	// Keep is true if the point stays; false means forget it.
	Keep bool
	// Reasons say why a kept point stays, one per rule that keeps it, in
	// the order "newest of VM", "manual", "forever", "last N",
	// "within D", then GFS as "hourly <hour>", "daily <day>",
	// "weekly <ISO week>", "monthly <month>", "yearly <year>" with the
	// bucket the point is newest in (see the package doc). Empty when the
	// point is forgotten.
	Reasons []string
}

// Apply decides for every point whether to keep or forget it under p, as
// of now. It returns one Decision per point, in the order of points; the
// input is not modified. An invalid policy gives an error wrapping
// ErrInvalidPolicy and no decisions. See the package doc for the rules.
func Apply(points []Point, p Policy, now time.Time) ([]Decision, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	decisions := make([]Decision, len(points))
	byVM := make(map[string][]int)
	for i, pt := range points {
		decisions[i].Point = pt
		byVM[pt.VMID] = append(byVM[pt.VMID], i)
	}
	for _, idx := range byVM {
		applyVM(decisions, idx, p, now)
	}
	for i := range decisions {
		decisions[i].Keep = len(decisions[i].Reasons) > 0
	}
	return decisions, nil
}

// applyVM adds reasons to the decisions of one VM's points (indices idx).
func applyVM(ds []Decision, idx []int, p Policy, now time.Time) {
	// Newest first; ties broken by ID so the result does not depend on
	// the input order.
	slices.SortFunc(idx, func(a, b int) int {
		pa, pb := ds[a].Point, ds[b].Point
		if c := pb.Time.Compare(pa.Time); c != 0 {
			return c
		}
		return cmp.Compare(pb.ID, pa.ID)
	})
	ds[idx[0]].Reasons = append(ds[idx[0]].Reasons, "newest of VM")

	loc := p.location()
	last := 0
	gfsLeft := make([]int, len(gfsRules))
	gfsBucket := make([]string, len(gfsRules))
	for i, r := range gfsRules {
		gfsLeft[i] = r.count(p)
	}
	for _, i := range idx {
		d := &ds[i]
		if d.Point.Manual && !p.ForgetManual {
			d.Reasons = append(d.Reasons, "manual")
			continue
		}
		if p.KeepForever {
			d.Reasons = append(d.Reasons, "forever")
			continue
		}
		if last < p.KeepLast {
			last++
			d.Reasons = append(d.Reasons, fmt.Sprintf("last %d", p.KeepLast))
		}
		if p.KeepWithin > 0 && !d.Point.Time.Before(now.Add(-p.KeepWithin)) {
			d.Reasons = append(d.Reasons, "within "+formatDuration(p.KeepWithin))
		}
		t := d.Point.Time.In(loc)
		for g, r := range gfsRules {
			if gfsLeft[g] == 0 {
				continue
			}
			// Points come newest first, so the first point of a
			// bucket is its newest, and buckets never recur.
			if b := r.bucket(t); b != gfsBucket[g] {
				gfsBucket[g] = b
				gfsLeft[g]--
				d.Reasons = append(d.Reasons, r.name+" "+b)
			}
		}
	}
}

// gfsRule is one calendar rule: its name in reasons, its count in a
// Policy, and the bucket a local time falls into.
type gfsRule struct {
	name   string
	count  func(Policy) int
	bucket func(t time.Time) string
}

var gfsRules = []gfsRule{
	{"hourly", func(p Policy) int { return p.Hourly }, func(t time.Time) string {
		// The offset keeps the repeated hour of a DST fall-back apart.
		return t.Format("2006-01-02 15:00 -07:00")
	}},
	{"daily", func(p Policy) int { return p.Daily }, func(t time.Time) string { return t.Format("2006-01-02") }},
	{"weekly", func(p Policy) int { return p.Weekly }, func(t time.Time) string {
		y, w := t.ISOWeek()
		return fmt.Sprintf("%04d-W%02d", y, w)
	}},
	{"monthly", func(p Policy) int { return p.Monthly }, func(t time.Time) string { return t.Format("2006-01") }},
	{"yearly", func(p Policy) int { return p.Yearly }, func(t time.Time) string { return t.Format("2006") }},
}

// formatDuration writes whole days as "7d" and anything else as
// time.Duration does ("36h0m0s").
func formatDuration(d time.Duration) string {
	const day = 24 * time.Hour
	if d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
