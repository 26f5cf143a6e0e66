package schedule

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatalf("load %s: %v", name, err)
	}
	return loc
}

// at parses "2006-01-02 15:04" in loc; an offset suffix like " +02:00"
// picks one of two equal wall clocks.
func at(t testing.TB, loc *time.Location, s string) time.Time {
	t.Helper()
	if strings.Count(s, " ") == 2 {
		u, err := time.Parse("2006-01-02 15:04 -07:00", s)
		if err != nil {
			t.Fatal(err)
		}
		return u.In(loc)
	}
	u, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// runs lists the next n runs after from.
func runs(s Schedule, from time.Time, n int) []string {
	var out []string
	for i := 0; i < n; i++ {
		from = s.Next(from)
		if from.IsZero() {
			out = append(out, "never")
			break
		}
		out = append(out, from.Format("2006-01-02 15:04 -07:00 Mon"))
	}
	return out
}

func TestNext(t *testing.T) {
	tests := []struct {
		name string
		s    Schedule
		from string // UTC unless the schedule's TZ says otherwise
		want []string
	}{
		{"minutes from midnight", Schedule{Kind: KindMinutes, Every: 25}, "2027-03-10 23:00",
			[]string{"2027-03-10 23:20 +00:00 Wed", "2027-03-10 23:45 +00:00 Wed", "2027-03-11 00:00 +00:00 Thu", "2027-03-11 00:25 +00:00 Thu"}},
		{"minutes strictly after", Schedule{Kind: KindMinutes, Every: 15}, "2027-03-10 10:15",
			[]string{"2027-03-10 10:30 +00:00 Wed"}},
		{"hours reset at midnight", Schedule{Kind: KindHours, Every: 5}, "2027-03-10 19:59",
			[]string{"2027-03-10 20:00 +00:00 Wed", "2027-03-11 00:00 +00:00 Thu", "2027-03-11 05:00 +00:00 Thu"}},
		{"days every 3 from start date", Schedule{Kind: KindDays, Every: 3, StartDate: "2027-03-01", Times: []string{"23:30", "01:00"}}, "2027-02-27 00:00",
			[]string{"2027-03-01 01:00 +00:00 Mon", "2027-03-01 23:30 +00:00 Mon", "2027-03-04 01:00 +00:00 Thu", "2027-03-04 23:30 +00:00 Thu"}},
		{"weekly", Schedule{Kind: KindWeekly, Weekdays: []Weekday{Friday, Monday}, Times: []string{"22:00"}}, "2027-03-10 00:00",
			[]string{"2027-03-12 22:00 +00:00 Fri", "2027-03-15 22:00 +00:00 Mon", "2027-03-19 22:00 +00:00 Fri"}},
		{"monthly 31st skips 30-day months", Schedule{Kind: KindMonthly, Days: []int{31}, Times: []string{"00:00"}}, "2027-03-31 00:00",
			[]string{"2027-05-31 00:00 +00:00 Mon", "2027-07-31 00:00 +00:00 Sat", "2027-08-31 00:00 +00:00 Tue", "2027-10-31 00:00 +00:00 Sun"}},
		{"monthly last day", Schedule{Kind: KindMonthly, LastDay: true, Times: []string{"12:00"}}, "2027-12-31 12:00",
			[]string{"2028-01-31 12:00 +00:00 Mon", "2028-02-29 12:00 +00:00 Tue", "2028-03-31 12:00 +00:00 Fri", "2028-04-30 12:00 +00:00 Sun"}},
		{"monthly 29th: leap day, none in a common February", Schedule{Kind: KindMonthly, Days: []int{29}, Times: []string{"03:00"}}, "2027-01-29 03:00",
			[]string{"2027-03-29 03:00 +00:00 Mon"}},
		{"monthly 29th and last day on a leap day runs once", Schedule{Kind: KindMonthly, Days: []int{29}, LastDay: true, Times: []string{"03:00"}}, "2028-02-01 00:00",
			[]string{"2028-02-29 03:00 +00:00 Tue", "2028-03-29 03:00 +00:00 Wed", "2028-03-31 03:00 +00:00 Fri"}},
		{"cron", Schedule{Kind: KindCron, Cron: "30 2 * * 1-5"}, "2027-03-12 03:00",
			[]string{"2027-03-15 02:30 +00:00 Mon", "2027-03-16 02:30 +00:00 Tue"}},
		{"cron day fields are ORed", Schedule{Kind: KindCron, Cron: "0 0 13 * 5"}, "2027-08-01 00:00",
			[]string{"2027-08-06 00:00 +00:00 Fri", "2027-08-13 00:00 +00:00 Fri", "2027-08-20 00:00 +00:00 Fri", "2027-08-27 00:00 +00:00 Fri", "2027-09-03 00:00 +00:00 Fri", "2027-09-10 00:00 +00:00 Fri", "2027-09-13 00:00 +00:00 Mon"}},
		{"cron leap day", Schedule{Kind: KindCron, Cron: "0 6 29 2 *"}, "2024-03-01 00:00",
			[]string{"2028-02-29 06:00 +00:00 Tue", "2032-02-29 06:00 +00:00 Sun"}},
		{"cron descriptor", Schedule{Kind: KindCron, Cron: "@daily"}, "2027-03-12 03:00",
			[]string{"2027-03-13 00:00 +00:00 Sat"}},
		{"invalid never runs", Schedule{Kind: KindMinutes, Every: 5}, "2027-03-12 03:00", []string{"never"}},

		// Europe/Berlin: 2027-03-28 02:00 CET -> 03:00 CEST; 2027-10-31 03:00 CEST -> 02:00 CET.
		{"berlin spring: times in the gap collapse to its end", Schedule{Kind: KindMinutes, Every: 15, TZ: "Europe/Berlin"}, "2027-03-28 01:30",
			[]string{"2027-03-28 01:45 +01:00 Sun", "2027-03-28 03:00 +02:00 Sun", "2027-03-28 03:15 +02:00 Sun"}},
		{"berlin spring: daily 02:30 runs at 03:00", Schedule{Kind: KindDays, Every: 1, Times: []string{"02:30"}, TZ: "Europe/Berlin"}, "2027-03-27 03:00",
			[]string{"2027-03-28 03:00 +02:00 Sun", "2027-03-29 02:30 +02:00 Mon"}},
		{"berlin autumn: repeated hour runs once", Schedule{Kind: KindMinutes, Every: 30, TZ: "Europe/Berlin"}, "2027-10-31 01:30",
			[]string{"2027-10-31 02:00 +02:00 Sun", "2027-10-31 02:30 +02:00 Sun", "2027-10-31 03:00 +01:00 Sun", "2027-10-31 03:30 +01:00 Sun"}},
		{"berlin autumn: daily 02:30 once, first occurrence", Schedule{Kind: KindDays, Every: 1, Times: []string{"02:30"}, TZ: "Europe/Berlin"}, "2027-10-30 03:00",
			[]string{"2027-10-31 02:30 +02:00 Sun", "2027-11-01 02:30 +01:00 Mon"}},
		{"berlin autumn: from inside the second pass", Schedule{Kind: KindDays, Every: 1, Times: []string{"02:30"}, TZ: "Europe/Berlin"}, "2027-10-31 02:10 +01:00",
			[]string{"2027-11-01 02:30 +01:00 Mon"}},
		{"berlin hours across spring", Schedule{Kind: KindHours, Every: 1, TZ: "Europe/Berlin"}, "2027-03-28 00:30",
			[]string{"2027-03-28 01:00 +01:00 Sun", "2027-03-28 03:00 +02:00 Sun", "2027-03-28 04:00 +02:00 Sun"}},
		{"berlin cron in the gap", Schedule{Kind: KindCron, Cron: "30 2 * * *", TZ: "Europe/Berlin"}, "2027-03-27 12:00",
			[]string{"2027-03-28 03:00 +02:00 Sun", "2027-03-29 02:30 +02:00 Mon"}},
		// America/New_York: 2027-03-14 02:00 EST -> 03:00 EDT; 2027-11-07 02:00 EDT -> 01:00 EST.
		{"new york spring", Schedule{Kind: KindWeekly, Weekdays: []Weekday{Sunday}, Times: []string{"02:15", "02:45", "03:00", "03:30"}, TZ: "America/New_York"}, "2027-03-13 00:00",
			[]string{"2027-03-14 03:00 -04:00 Sun", "2027-03-14 03:30 -04:00 Sun", "2027-03-21 02:15 -04:00 Sun"}},
		{"new york autumn", Schedule{Kind: KindMinutes, Every: 20, TZ: "America/New_York"}, "2027-11-07 00:50",
			[]string{"2027-11-07 01:00 -04:00 Sun", "2027-11-07 01:20 -04:00 Sun", "2027-11-07 01:40 -04:00 Sun", "2027-11-07 02:00 -05:00 Sun"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := time.UTC
			if tt.s.TZ != "" {
				loc = mustLoc(t, tt.s.TZ)
			}
			got := runs(tt.s, at(t, loc, tt.from), len(tt.want))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("runs after %s (-want +got):\n%s", tt.from, diff)
			}
		})
	}
}

// TestNextYear walks every schedule kind through a whole year in three
// zones and checks the DST rule globally: runs strictly increase, every
// local time of the schedule runs exactly once per day it applies to
// (none doubled, none lost; a time in a spring gap runs at the gap's end),
// and Next is the same from any instant between two runs.
func TestNextYear(t *testing.T) {
	// Counts worked out by hand for 2028 (366 days, 53 Saturdays and
	// Sundays; spring-forward on Sunday 26 March in Berlin and Sunday 12
	// March in New York, from 02:00 to 03:00), in UTC and in the two DST
	// zones.
	scheds := []struct {
		s        Schedule
		utc, dst int
	}{
		{Schedule{Kind: KindMinutes, Every: 15}, 366 * 96, 366*96 - 4}, // 02:00–02:45 fold into 03:00
		{Schedule{Kind: KindMinutes, Every: 59}, 366 * 25, 366 * 25},   // 02:57 moves to 03:00
		{Schedule{Kind: KindHours, Every: 1}, 366 * 24, 366*24 - 1},    // 02:00 folds into 03:00
		{Schedule{Kind: KindHours, Every: 7}, 366 * 4, 366 * 4},        // 00, 07, 14, 21
		{Schedule{Kind: KindDays, Every: 1, Times: []string{"00:00", "02:30", "23:45"}}, 366 * 3, 366 * 3},
		{Schedule{Kind: KindDays, Every: 4, StartDate: "2027-12-30", Times: []string{"01:30"}}, 91, 91},
		{Schedule{Kind: KindWeekly, Weekdays: []Weekday{Sunday, Wednesday}, Times: []string{"02:00", "02:30", "03:00"}}, (53 + 52) * 3, (53+52)*3 - 2},
		{Schedule{Kind: KindMonthly, Days: []int{1, 29, 30, 31}, LastDay: true, Times: []string{"02:30"}}, 12 + 12 + 11 + 7, 12 + 12 + 11 + 7},
		{Schedule{Kind: KindCron, Cron: "*/20 1-3 * * 0"}, 53 * 9, 53*9 - 3},
	}
	for _, zone := range []string{"UTC", "Europe/Berlin", "America/New_York"} {
		loc := mustLoc(t, zone)
		for _, sc := range scheds {
			s := sc.s
			wantCount := sc.dst
			if zone == "UTC" {
				wantCount = sc.utc
			}
			s.TZ = zone
			t.Run(fmt.Sprintf("%s/%s-%d-%s", zone, s.Kind, s.Every, s.Cron), func(t *testing.T) {
				c, err := s.compile()
				if err != nil {
					t.Fatal(err)
				}
				// Expected: per local date of 2028 (a leap year), the
				// schedule's wall times resolved by the rule, deduplicated.
				want := map[int64]bool{}
				for d := time.Date(2028, 1, 1, 0, 0, 0, 0, time.UTC); d.Year() == 2028; d = d.AddDate(0, 0, 1) {
					if !c.runsOn(d.Year(), d.Month(), d.Day()) {
						continue
					}
					_, off0 := time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, loc).Zone()
					_, off1 := time.Date(d.Year(), d.Month(), d.Day()+1, 0, 0, 0, 0, loc).Zone()
					for _, m := range c.times {
						u := time.Date(d.Year(), d.Month(), d.Day(), m/60, m%60, 0, 0, loc)
						wall := time.Date(d.Year(), d.Month(), d.Day(), m/60, m%60, 0, 0, time.UTC)
						if off0 == off1 { // no change this day: the wall clock is unique
							want[u.Unix()] = true
							continue
						}
						// Brute force the rule: the first minute whose wall
						// clock is at or after the wanted one (DST shifts in
						// these zones are one hour).
						for probe := u.Add(-90 * time.Minute); ; probe = probe.Add(time.Minute) {
							if wallUnix(probe) >= wall.Unix() {
								want[probe.Unix()] = true
								break
							}
						}
					}
				}
				start := time.Date(2028, 1, 1, 0, 0, 0, 0, loc).Add(-time.Nanosecond)
				end := time.Date(2029, 1, 1, 0, 0, 0, 0, loc)
				got := map[int64]bool{}
				prev := start
				for n := c.next(start); n.Before(end); n = c.next(n) { // Next without recompiling; Next itself is checked between runs
					if !n.After(prev) {
						t.Fatalf("Next(%v) = %v, not after", prev, n)
					}
					if mid := prev.Add(n.Sub(prev) / 2); prev != start && len(got)%5 == 0 && s.Next(mid) != n {
						t.Fatalf("Next(%v) = %v, want %v (between two runs)", mid, s.Next(mid), n)
					}
					if got[n.Unix()] {
						t.Fatalf("run %v twice", n)
					}
					got[n.Unix()] = true
					prev = n
				}
				if len(got) != wantCount || len(want) != wantCount {
					t.Errorf("%d runs in 2028 (brute force: %d), want %d", len(got), len(want), wantCount)
				}
				for u := range want {
					if !got[u] {
						t.Errorf("run at %v lost", time.Unix(u, 0).In(loc))
					}
				}
			})
		}
	}
}

func TestWeekdayJSON(t *testing.T) {
	var ds []Weekday
	if err := json.Unmarshal([]byte(`["Mon","sunday","SAT"]`), &ds); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Weekday{Monday, Sunday, Saturday}, ds); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`["Funday"]`), &ds); err == nil {
		t.Error("Funday decoded without error")
	}
	if _, err := json.Marshal([]Weekday{7}); err == nil {
		t.Error("weekday 7 encoded without error")
	}
}

func TestScheduleJSONRoundTrip(t *testing.T) {
	for _, s := range []Schedule{
		{Kind: KindMinutes, Every: 15, TZ: "Europe/Berlin"},
		{Kind: KindDays, Every: 2, StartDate: "2028-02-29", Times: []string{"01:00", "13:00"}},
		{Kind: KindWeekly, Weekdays: []Weekday{Monday, Friday}, Times: []string{"22:00"}, TZ: "America/New_York"},
		{Kind: KindMonthly, Days: []int{1, 15}, LastDay: true, Times: []string{"00:00"}},
		{Kind: KindCron, Cron: "5 4 * * sun"},
	} {
		b, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		var got Schedule
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(s, got); diff != "" {
			t.Errorf("round trip of %s (-want +got):\n%s", b, diff)
		}
	}
}

// fieldErrors flattens a joined error into "field: rule" strings.
func fieldErrors(err error) []string {
	if err == nil {
		return nil
	}
	var out []string
	var walk func(error)
	walk = func(e error) {
		if j, ok := e.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		var fe *FieldError
		if errors.As(e, &fe) {
			out = append(out, fe.Field+": "+fe.Rule)
			return
		}
		out = append(out, "?: "+e.Error())
	}
	walk(err)
	return out
}

func TestScheduleValidate(t *testing.T) {
	tests := []struct {
		name string
		s    Schedule
		want []string
	}{
		{"valid minutes", Schedule{Kind: KindMinutes, Every: 15, TZ: "Europe/Berlin"}, nil},
		{"no kind", Schedule{}, []string{"kind: is required (minutes, hours, days, weekly, monthly or cron)"}},
		{"unknown kind", Schedule{Kind: "yearly"}, []string{`kind: "yearly" is unknown, must be minutes, hours, days, weekly, monthly or cron`}},
		{"unknown zone", Schedule{Kind: KindHours, Every: 1, TZ: "Mars/Olympus"}, []string{`tz: unknown time zone "Mars/Olympus"`}},
		{"minutes too small", Schedule{Kind: KindMinutes, Every: 14}, []string{"every: is 14, must be 15–59 minutes"}},
		{"minutes too large", Schedule{Kind: KindMinutes, Every: 60}, []string{"every: is 60, must be 15–59 minutes"}},
		{"hours zero", Schedule{Kind: KindHours}, []string{"every: is 0, must be 1–23 hours"}},
		{"hours too large", Schedule{Kind: KindHours, Every: 24}, []string{"every: is 24, must be 1–23 hours"}},
		{"days range", Schedule{Kind: KindDays, Every: 366, Times: []string{"01:00"}}, []string{"every: is 366, must be 1–365 days"}},
		{"days without times", Schedule{Kind: KindDays, Every: 1}, []string{"times: at least one time of day HH:MM is required"}},
		{"bad start date", Schedule{Kind: KindDays, Every: 1, Times: []string{"01:00"}, StartDate: "2027-02-30"}, []string{`startDate: "2027-02-30" is not a date YYYY-MM-DD`}},
		{"bad times", Schedule{Kind: KindDays, Every: 1, Times: []string{"1:00", "24:00", "10:60", "+1:00", "10:+5"}}, []string{
			`times[0]: "1:00" is not HH:MM`, `times[1]: "24:00" is not a time of day (00:00–23:59)`, `times[2]: "10:60" is not HH:MM`,
			`times[3]: "+1:00" is not HH:MM`, `times[4]: "10:+5" is not HH:MM`}},
		{"times too close", Schedule{Kind: KindDays, Every: 1, Times: []string{"10:10", "10:00", "12:00", "12:00"}}, []string{
			"times[0]: 10:10 is 10 minutes after times[1] 10:00, must be at least 15 apart",
			"times[3]: 12:00 is 0 minutes after times[2] 12:00, must be at least 15 apart"}},
		{"weekly without days", Schedule{Kind: KindWeekly, Times: []string{"01:00"}}, []string{"weekdays: at least one weekday is required"}},
		{"weekly bad days", Schedule{Kind: KindWeekly, Weekdays: []Weekday{1, 1, 9}, Times: []string{"01:00"}}, []string{
			"weekdays[1]: Mon is listed twice", "weekdays[2]: is 9, must be 0 (Sun)–6 (Sat)"}},
		{"monthly without days", Schedule{Kind: KindMonthly, Times: []string{"01:00"}}, []string{"days: at least one day of the month (or lastDay) is required"}},
		{"monthly bad days", Schedule{Kind: KindMonthly, Days: []int{0, 32, 5, 5}, Times: []string{"01:00"}}, []string{
			"days[0]: is 0, must be 1–31", "days[1]: is 32, must be 1–31", "days[3]: 5 is listed twice"}},
		{"cron syntax", Schedule{Kind: KindCron, Cron: "* * *"}, []string{"cron: not a 5-field cron expression: expected exactly 5 fields, found 3: [* * *]"}},
		{"cron seconds", Schedule{Kind: KindCron, Cron: "0 0 0 * * *"}, []string{"cron: not a 5-field cron expression: expected exactly 5 fields, found 6: [0 0 0 * * *]"}},
		{"cron zone", Schedule{Kind: KindCron, Cron: "CRON_TZ=UTC 0 0 * * *"}, []string{"cron: must not name a time zone: set tz instead"}},
		{"cron every", Schedule{Kind: KindCron, Cron: "@every 1h"}, []string{"cron: @every is not supported: use kind minutes or hours"}},
		{"cron never", Schedule{Kind: KindCron, Cron: "0 0 30 2 *"}, []string{`cron: "0 0 30 2 *" matches no date`}},
		{"unused fields", Schedule{Kind: KindMinutes, Every: 30, Times: []string{"01:00"}, StartDate: "2027-01-01", Weekdays: []Weekday{1}, Days: []int{1}, LastDay: true, Cron: "* * * * *"}, []string{
			"times: is not used by kind minutes and must be empty", "startDate: is not used by kind minutes and must be empty",
			"weekdays: is not used by kind minutes and must be empty", "days: is not used by kind minutes and must be empty",
			"lastDay: is not used by kind minutes and must be empty", "cron: is not used by kind minutes and must be empty"}},
		{"every unused by cron", Schedule{Kind: KindCron, Cron: "0 * * * *", Every: 3}, []string{"every: is not used by kind cron and must be empty"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.s.Validate()
			if diff := cmp.Diff(tt.want, fieldErrors(err)); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "schedule: ") {
				t.Errorf("message %q does not name the package", err)
			}
		})
	}
}
