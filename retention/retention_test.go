package retention

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // Europe/Berlin on machines without a zone database

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func mustLoad(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load time zone %q: %v", name, err)
	}
	return loc
}

// series makes points of one VM every step from start (inclusive) to end
// (exclusive), ids "<vm>-NNN" in time order.
func series(vm string, start, end time.Time, step time.Duration) []Point {
	var ps []Point
	for t := start; t.Before(end); t = t.Add(step) {
		ps = append(ps, Point{ID: fmt.Sprintf("%s-%03d", vm, len(ps)), VMID: vm, Time: t})
	}
	return ps
}

// acosDays is the ACOS example: a daily full backup at 00:00 and hourly
// incrementals in between, in Europe/Berlin, for days days from 2026-11-16.
func acosDays(t testing.TB, days int) []Point {
	loc := mustLoad(t, "Europe/Berlin")
	start := time.Date(2026, 11, 16, 0, 0, 0, 0, loc)
	return series("vm-1", start, start.AddDate(0, 0, days), time.Hour)
}

type goldenCase struct {
	name   string
	points []Point
	policy Policy
	now    time.Time
}

func goldenCases(t testing.TB) []goldenCase {
	berlin := mustLoad(t, "Europe/Berlin")
	acos := acosDays(t, 9)
	acosNow := acos[len(acos)-1].Time.Add(10 * time.Minute)

	// Daily at 02:00 UTC across month ends and the 2025/2026 year end
	// (ISO week 2026-W01 starts on Monday 2025-12-29).
	yearEnd := series("vm-1", time.Date(2025, 10, 1, 2, 0, 0, 0, time.UTC), time.Date(2026, 2, 11, 0, 0, 0, 0, time.UTC), 24*time.Hour)

	// Daily until Wednesday 2025-12-31, which belongs to ISO week 2026-W01.
	isoYear := series("vm-1", time.Date(2025, 12, 17, 12, 0, 0, 0, time.UTC), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), 24*time.Hour)

	// Daily at 23:30 UTC around the end of March: in Berlin that is the
	// next day, 00:30 in winter and 01:30 after the DST change of 29 March.
	lateUTC := series("vm-1", time.Date(2026, 3, 24, 23, 30, 0, 0, time.UTC), time.Date(2026, 4, 3, 0, 0, 0, 0, time.UTC), 24*time.Hour)

	// Every 20 minutes through the DST nights in Berlin.
	spring := series("vm-1", time.Date(2026, 3, 28, 23, 0, 0, 0, berlin), time.Date(2026, 3, 29, 5, 0, 0, 0, berlin), 20*time.Minute)
	fall := series("vm-1", time.Date(2026, 10, 24, 23, 0, 0, 0, berlin), time.Date(2026, 10, 25, 5, 0, 0, 0, berlin), 20*time.Minute)
	// Every 30 minutes through the New York fall-back night (1 November).
	newYork := mustLoad(t, "America/New_York")
	nyFall := series("vm-1", time.Date(2026, 10, 31, 23, 0, 0, 0, newYork), time.Date(2026, 11, 1, 4, 0, 0, 0, newYork), 30*time.Minute)

	// Hourly scheduled points and three made by hand in between.
	manual := series("vm-1", time.Date(2026, 11, 24, 0, 0, 0, 0, berlin), time.Date(2026, 11, 24, 12, 0, 0, 0, berlin), time.Hour)
	for i, at := range []time.Time{
		time.Date(2026, 11, 24, 3, 15, 0, 0, berlin),
		time.Date(2026, 11, 24, 9, 45, 0, 0, berlin),
		time.Date(2026, 11, 24, 11, 30, 0, 0, berlin),
	} {
		manual = append(manual, Point{ID: fmt.Sprintf("manual-%d", i), VMID: "vm-1", Time: at, Manual: true})
	}
	manualNow := time.Date(2026, 11, 24, 12, 0, 0, 0, berlin)

	// Three VMs: one backed up hourly, one daily until a week ago, one
	// once long ago; given in shuffled order.
	multi := slices.Concat(
		series("vm-a", time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC), time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC), time.Hour),
		series("vm-b", time.Date(2026, 11, 10, 6, 0, 0, 0, time.UTC), time.Date(2026, 11, 17, 7, 0, 0, 0, time.UTC), 24*time.Hour),
		series("vm-c", time.Date(2025, 1, 1, 6, 0, 0, 0, time.UTC), time.Date(2025, 1, 1, 7, 0, 0, 0, time.UTC), time.Hour),
	)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(multi), func(i, j int) { multi[i], multi[j] = multi[j], multi[i] })
	multiNow := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

	return []goldenCase{
		{"acos-keep-last-7", acos, Policy{KeepLast: 7, Location: berlin}, acosNow},
		{"acos-keep-within-7d", acos, Policy{KeepWithin: 7 * 24 * time.Hour, Location: berlin}, acosNow},
		{"acos-daily-7", acos, Policy{Daily: 7, Location: berlin}, acosNow},
		{"acos-gfs", acos, Policy{KeepLast: 3, Hourly: 6, Daily: 4, Weekly: 2, Location: berlin}, acosNow},
		{"gfs-year-end", yearEnd, Policy{Daily: 7, Weekly: 6, Monthly: 4, Yearly: 3}, time.Date(2026, 2, 10, 3, 0, 0, 0, time.UTC)},
		{"gfs-iso-week-year", isoYear, Policy{Weekly: 3, Yearly: 2}, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"gfs-month-end-berlin", lateUTC, Policy{Daily: 5, Monthly: 2, Location: berlin}, time.Date(2026, 4, 3, 0, 0, 0, 0, time.UTC)},
		{"gfs-month-end-utc", lateUTC, Policy{Daily: 5, Monthly: 2}, time.Date(2026, 4, 3, 0, 0, 0, 0, time.UTC)},
		{"dst-berlin-spring", spring, Policy{Hourly: 5, Daily: 2, Location: berlin}, time.Date(2026, 3, 29, 5, 0, 0, 0, berlin)},
		{"dst-berlin-fall", fall, Policy{Hourly: 5, Daily: 2, Location: berlin}, time.Date(2026, 10, 25, 5, 0, 0, 0, berlin)},
		{"dst-new-york-fall", nyFall, Policy{Hourly: 4, Daily: 2, Location: newYork}, time.Date(2026, 11, 1, 4, 0, 0, 0, newYork)},
		{"manual-kept", manual, Policy{KeepLast: 3, Location: berlin}, manualNow},
		{"manual-forgotten", manual, Policy{KeepLast: 3, ForgetManual: true, Location: berlin}, manualNow},
		{"multi-vm", multi, Policy{KeepLast: 2, KeepWithin: 3 * time.Hour}, multiNow},
		{"multi-vm-newest-only", multi, Policy{KeepWithin: 3 * time.Hour}, multiNow},
		{"forever", multi, Policy{KeepForever: true}, multiNow},
	}
}

// render prints decisions grouped by VM, newest first, times in the
// policy's zone.
func render(c goldenCase, ds []Decision) string {
	var b strings.Builder
	loc := c.policy.location()
	fmt.Fprintf(&b, "policy: %s\nnow: %s\n", c.policy, c.now.In(loc).Format(time.DateTime+" -07:00"))
	sorted := slices.Clone(ds)
	slices.SortStableFunc(sorted, func(a, b Decision) int {
		if c := strings.Compare(a.Point.VMID, b.Point.VMID); c != 0 {
			return c
		}
		return b.Point.Time.Compare(a.Point.Time)
	})
	vm, kept := "", 0
	for i, d := range sorted {
		if i == 0 || d.Point.VMID != vm {
			vm = d.Point.VMID
			fmt.Fprintf(&b, "\nvm %s\n", vm)
		}
		verdict := "forget"
		if d.Keep {
			verdict = "keep  "
			kept++
		}
		manual := "      "
		if d.Point.Manual {
			manual = "manual"
		}
		line := fmt.Sprintf("  %s %s %s %-10s %s", verdict, d.Point.Time.In(loc).Format("Mon 2006-01-02 15:04 -07:00"), manual, d.Point.ID, strings.Join(d.Reasons, ", "))
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	fmt.Fprintf(&b, "\nkept %d of %d\n", kept, len(ds))
	return b.String()
}

// diffGolden compares got with the golden file at path (rewriting it first
// with -update) and returns a diff, "" when they match.
func diffGolden(path, got string) (string, error) {
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			return "", err
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%w (run go test ./retention -update to create it)", err)
	}
	// Line by line, so a diff names the points that changed.
	return cmp.Diff(strings.Split(string(want), "\n"), strings.Split(got, "\n")), nil
}

func TestGolden(t *testing.T) {
	for _, c := range goldenCases(t) {
		t.Run(c.name, func(t *testing.T) {
			ds, err := Apply(c.points, c.policy, c.now)
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			checkInvariants(t, c.points, ds)
			diff, err := diffGolden(filepath.Join("testdata", c.name+".golden"), render(c, ds))
			if err != nil {
				t.Fatal(err)
			}
			if diff != "" {
				t.Errorf("decisions differ from testdata/%s.golden (-want +got):\n%s", c.name, diff)
			}
		})
	}
}

// TestGoldenDetectsChange makes sure the golden comparison can fail.
func TestGoldenDetectsChange(t *testing.T) {
	if *update {
		t.Skip("golden files are being rewritten")
	}
	c := goldenCases(t)[0]
	ds, err := Apply(c.points, c.policy, c.now)
	if err != nil {
		t.Fatal(err)
	}
	ds[0].Keep = !ds[0].Keep
	diff, err := diffGolden(filepath.Join("testdata", c.name+".golden"), render(c, ds))
	if err != nil {
		t.Fatal(err)
	}
	if diff == "" {
		t.Fatal("changed decisions compare equal to the golden file")
	}
}

// checkInvariants holds for every policy: one decision per point in input
// order, reasons exactly on kept points, the newest point of every VM kept.
func checkInvariants(t *testing.T, points []Point, ds []Decision) {
	t.Helper()
	if len(ds) != len(points) {
		t.Fatalf("%d decisions for %d points", len(ds), len(points))
	}
	newest := map[string]Point{}
	for i, d := range ds {
		if d.Point != points[i] {
			t.Fatalf("decision %d is for %+v, want %+v (input order)", i, d.Point, points[i])
		}
		if d.Keep != (len(d.Reasons) > 0) {
			t.Errorf("point %s: keep=%v with reasons %q", d.Point.ID, d.Keep, d.Reasons)
		}
		if n, ok := newest[d.Point.VMID]; !ok || d.Point.Time.After(n.Time) {
			newest[d.Point.VMID] = d.Point
		}
	}
	for _, d := range ds {
		if n := newest[d.Point.VMID]; d.Point.Time.Equal(n.Time) && !d.Keep {
			t.Errorf("newest point %s of VM %s is forgotten", d.Point.ID, d.Point.VMID)
		}
	}
}

func TestValidate(t *testing.T) {
	const noRule = "retention: no rule: set KeepLast, KeepWithin, a GFS count (Hourly, Daily, Weekly, Monthly, Yearly) or KeepForever"
	for _, tc := range []struct {
		name   string
		policy Policy
		want   []string // messages of the *PolicyErrors, in order
	}{
		{"keep last", Policy{KeepLast: 7}, nil},
		{"within", Policy{KeepWithin: time.Hour}, nil},
		{"forever", Policy{KeepForever: true}, nil},
		{"gfs", Policy{Hourly: 24, Daily: 7, Weekly: 4, Monthly: 12, Yearly: 3, Location: time.Local}, nil},
		{"forget manual", Policy{Yearly: 1, ForgetManual: true}, nil},
		{"zero policy", Policy{}, []string{noRule}},
		{"only options", Policy{Location: time.UTC, ForgetManual: true}, []string{noRule}},
		{"negative keep last", Policy{KeepLast: -1}, []string{
			"retention: KeepLast: is -1, must be > 0 (or 0 for unused)", noRule}},
		{"negative within", Policy{KeepWithin: -time.Minute, Daily: 1}, []string{
			"retention: KeepWithin: is -1m0s, must be > 0 (or 0 for unused)"}},
		{"every count negative", Policy{KeepLast: -1, Hourly: -2, Daily: -3, Weekly: -4, Monthly: -5, Yearly: -6}, []string{
			"retention: KeepLast: is -1, must be > 0 (or 0 for unused)",
			"retention: Hourly: is -2, must be > 0 (or 0 for unused)",
			"retention: Daily: is -3, must be > 0 (or 0 for unused)",
			"retention: Weekly: is -4, must be > 0 (or 0 for unused)",
			"retention: Monthly: is -5, must be > 0 (or 0 for unused)",
			"retention: Yearly: is -6, must be > 0 (or 0 for unused)",
			noRule}},
		{"forever with count", Policy{KeepForever: true, Monthly: 3}, []string{
			"retention: KeepForever: cannot be combined with other rules"}},
		{"forever with within", Policy{KeepForever: true, KeepWithin: time.Hour}, []string{
			"retention: KeepForever: cannot be combined with other rules"}},
		{"forever with negative count", Policy{KeepForever: true, Daily: -1}, []string{
			"retention: Daily: is -1, must be > 0 (or 0 for unused)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.Validate()
			var got []string
			if err != nil {
				if !errors.Is(err, ErrInvalidPolicy) {
					t.Errorf("error %v does not wrap ErrInvalidPolicy", err)
				}
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var pe *PolicyError
					if !errors.As(e, &pe) {
						t.Fatalf("error %v is not a *PolicyError", e)
					}
					got = append(got, pe.Error())
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Validate() mismatch (-want +got):\n%s", diff)
			}
			if err != nil {
				ds, aerr := Apply([]Point{{ID: "p", VMID: "vm", Time: time.Now()}}, tc.policy, time.Now())
				if ds != nil || !errors.Is(aerr, ErrInvalidPolicy) {
					t.Errorf("Apply with an invalid policy = %v, %v; want nil, ErrInvalidPolicy", ds, aerr)
				}
			}
		})
	}
}

func TestPolicyErrorFields(t *testing.T) {
	err := Policy{Weekly: -2}.Validate()
	var pe *PolicyError
	if !errors.As(err, &pe) || pe.Field != "Weekly" || !strings.Contains(pe.Rule, "-2") {
		t.Fatalf("errors.As(%v) = %+v, want Field Weekly naming -2", err, pe)
	}
}

func TestPolicyString(t *testing.T) {
	berlin := mustLoad(t, "Europe/Berlin")
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{KeepLast: 7, KeepWithin: 7 * 24 * time.Hour, Daily: 7, Weekly: 4, Location: berlin}, "last 7, within 7d, daily 7, weekly 4 (Europe/Berlin)"},
		{Policy{KeepForever: true}, "forever (UTC)"},
		{Policy{KeepWithin: 36 * time.Hour, Hourly: 1, Monthly: 2, Yearly: 3, ForgetManual: true}, "within 36h0m0s, hourly 1, monthly 2, yearly 3, forget manual (UTC)"},
		{Policy{}, "no rule (UTC)"},
	} {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// kept returns the ids of kept points with their reasons.
func kept(ds []Decision) map[string]string {
	m := map[string]string{}
	for _, d := range ds {
		if d.Keep {
			m[d.Point.ID] = strings.Join(d.Reasons, ", ")
		}
	}
	return m
}

func TestApplyRules(t *testing.T) {
	at := func(day, hour, minute int) time.Time { return time.Date(2026, 11, day, hour, minute, 0, 0, time.UTC) }
	now := at(25, 0, 0)
	// Two VMs; points out of order on purpose.
	points := []Point{
		{ID: "a-24-18", VMID: "a", Time: at(24, 18, 0)},
		{ID: "a-23-10", VMID: "a", Time: at(23, 10, 0)},
		{ID: "a-24-10", VMID: "a", Time: at(24, 10, 0)},
		{ID: "a-23-18", VMID: "a", Time: at(23, 18, 0)},
		{ID: "a-22-18", VMID: "a", Time: at(22, 18, 0)},
		{ID: "b-20-12", VMID: "b", Time: at(20, 12, 0)},
		{ID: "b-21-12", VMID: "b", Time: at(21, 12, 0), Manual: true},
	}
	for _, tc := range []struct {
		name   string
		policy Policy
		now    time.Time
		want   map[string]string
	}{
		{"daily keeps the newest of each of the last days", Policy{Daily: 2}, now, map[string]string{
			"a-24-18": "newest of VM, daily 2026-11-24",
			"a-23-18": "daily 2026-11-23",
			"b-21-12": "newest of VM, manual",
			"b-20-12": "daily 2026-11-20",
		}},
		{"keep last counts per VM, manual points aside", Policy{KeepLast: 2}, now, map[string]string{
			"a-24-18": "newest of VM, last 2",
			"a-24-10": "last 2",
			"b-21-12": "newest of VM, manual",
			"b-20-12": "last 2",
		}},
		{"forget manual", Policy{KeepLast: 1, ForgetManual: true}, now, map[string]string{
			"a-24-18": "newest of VM, last 1",
			"b-21-12": "newest of VM, last 1",
		}},
		{"within is inclusive at the boundary", Policy{KeepWithin: at(25, 0, 0).Sub(at(23, 18, 0))}, now, map[string]string{
			"a-24-18": "newest of VM, within 30h0m0s",
			"a-24-10": "within 30h0m0s",
			"a-23-18": "within 30h0m0s",
			"b-21-12": "newest of VM, manual",
		}},
		{"within keeps points dated after now", Policy{KeepWithin: time.Hour}, at(20, 0, 0), map[string]string{
			"a-24-18": "newest of VM, within 1h0m0s",
			"a-24-10": "within 1h0m0s",
			"a-23-18": "within 1h0m0s",
			"a-23-10": "within 1h0m0s",
			"a-22-18": "within 1h0m0s",
			"b-21-12": "newest of VM, manual",
			"b-20-12": "within 1h0m0s",
		}},
		{"weekly", Policy{Weekly: 5}, now, map[string]string{
			// 2026-11-16..22 is ISO week 47, 23..29 week 48.
			"a-24-18": "newest of VM, weekly 2026-W48",
			"a-22-18": "weekly 2026-W47",
			"b-21-12": "newest of VM, manual",
			"b-20-12": "weekly 2026-W47",
		}},
		{"forever", Policy{KeepForever: true}, now, map[string]string{
			"a-24-18": "newest of VM, forever", "a-24-10": "forever", "a-23-18": "forever", "a-23-10": "forever",
			"a-22-18": "forever", "b-21-12": "newest of VM, manual", "b-20-12": "forever",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds, err := Apply(points, tc.policy, tc.now)
			if err != nil {
				t.Fatal(err)
			}
			checkInvariants(t, points, ds)
			if diff := cmp.Diff(tc.want, kept(ds)); diff != "" {
				t.Errorf("kept points mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestApplyEqualTimes: points made at the same instant are ordered by id,
// whatever the input order.
func TestApplyEqualTimes(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := []Point{{ID: "x", VMID: "v", Time: at}, {ID: "y", VMID: "v", Time: at}}
	b := []Point{a[1], a[0]}
	for _, ps := range [][]Point{a, b} {
		ds, err := Apply(ps, Policy{KeepLast: 1}, at)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]string{"y": "newest of VM, last 1"}, kept(ds)); diff != "" {
			t.Errorf("input %v: kept mismatch (-want +got):\n%s", ps, diff)
		}
	}
}

func TestApplyEmpty(t *testing.T) {
	ds, err := Apply(nil, Policy{KeepLast: 1}, time.Now())
	if err != nil || len(ds) != 0 {
		t.Fatalf("Apply(nil) = %v, %v; want no decisions, no error", ds, err)
	}
}

// TestApplyRandom checks the invariants, and that the input order does not
// matter, over random points and policies.
func TestApplyRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	berlin := mustLoad(t, "Europe/Berlin")
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 300 {
		var points []Point
		for j := range r.IntN(60) {
			points = append(points, Point{
				ID:     fmt.Sprintf("p%03d", j),
				VMID:   fmt.Sprintf("vm%d", r.IntN(3)),
				Time:   base.Add(time.Duration(r.Int64N(int64(400 * 24 * time.Hour)))),
				Manual: r.IntN(8) == 0,
			})
		}
		p := Policy{
			KeepLast: r.IntN(4), KeepWithin: time.Duration(r.IntN(3)) * 24 * time.Hour,
			Hourly: r.IntN(3), Daily: r.IntN(4), Weekly: r.IntN(3), Monthly: r.IntN(3), Yearly: r.IntN(2),
			ForgetManual: r.IntN(2) == 0,
		}
		if i%2 == 0 {
			p.Location = berlin
		}
		if !p.hasRule() {
			p.KeepForever = true
		}
		now := base.Add(400 * 24 * time.Hour)
		ds, err := Apply(points, p, now)
		if err != nil {
			t.Fatal(err)
		}
		checkInvariants(t, points, ds)
		shuffled := slices.Clone(points)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		ds2, err := Apply(shuffled, p, now)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(kept(ds), kept(ds2)); diff != "" {
			t.Fatalf("policy %s: shuffling the input changed the decisions (-before +after):\n%s", p, diff)
		}
		// A point kept by a count rule must be the newest of its bucket
		// among the VM's rule-governed points.
		for _, d := range ds {
			for _, reason := range d.Reasons {
				if rule, bucket, ok := strings.Cut(reason, " "); ok && slices.Contains([]string{"hourly", "daily", "weekly", "monthly", "yearly"}, rule) {
					for _, o := range points {
						if o.VMID == d.Point.VMID && (!o.Manual || p.ForgetManual) && o.Time.After(d.Point.Time) &&
							gfsBucketOf(rule, o.Time.In(p.location())) == bucket {
							t.Fatalf("%s kept %s as %q, but %s is newer in that bucket", p, d.Point.ID, reason, o.ID)
						}
					}
				}
			}
		}
	}
}

func gfsBucketOf(rule string, t time.Time) string {
	for _, r := range gfsRules {
		if r.name == rule {
			return r.bucket(t)
		}
	}
	panic("no rule " + rule)
}
