package schedule

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var weekdays = []Weekday{Monday, Tuesday, Wednesday, Thursday, Friday}

func TestWindow(t *testing.T) {
	night := Window{TZ: "Europe/Berlin", Ranges: []Range{{Weekdays: weekdays, Start: "22:00", End: "06:00"}}}
	weekend := Window{TZ: "Europe/Berlin", Ranges: []Range{
		{Weekdays: weekdays, Start: "22:00", End: "06:00"},
		{Weekdays: []Weekday{Saturday, Sunday}, Start: "00:00", End: "24:00"},
	}}
	always := Window{Ranges: []Range{{Weekdays: []Weekday{0, 1, 2, 3, 4, 5, 6}, Start: "00:00", End: "24:00"}}}
	dstNight := Window{TZ: "Europe/Berlin", Ranges: []Range{{Weekdays: []Weekday{Sunday}, Start: "02:30", End: "02:45"}}}
	nyNight := Window{TZ: "America/New_York", Ranges: []Range{{Weekdays: []Weekday{Saturday}, Start: "23:00", End: "01:30"}}}
	tests := []struct {
		name     string
		w        Window
		t        string // in the window's zone
		in       bool
		nextOpen string
		closeAt  string // "" when CloseAfter reports false
	}{
		// 2027-03-12 is a Friday.
		{"friday before opening", night, "2027-03-12 21:59", false, "2027-03-12 22:00 +01:00", ""},
		{"friday at opening", night, "2027-03-12 22:00", true, "2027-03-12 22:00 +01:00", "2027-03-13 06:00 +01:00"},
		{"saturday night part of friday's range", night, "2027-03-13 05:59", true, "2027-03-13 05:59 +01:00", "2027-03-13 06:00 +01:00"},
		{"saturday at close", night, "2027-03-13 06:00", false, "2027-03-15 22:00 +01:00", ""},
		{"sunday night closed (range starts on Mon-Fri)", night, "2027-03-14 23:00", false, "2027-03-15 22:00 +01:00", ""},
		{"monday morning closed (sunday has no range)", night, "2027-03-15 01:00", false, "2027-03-15 22:00 +01:00", ""},
		{"merged with the weekend (sunday has no night range)", weekend, "2027-03-12 23:00", true, "2027-03-12 23:00 +01:00", "2027-03-15 00:00 +01:00"},
		{"weekend before its opening", weekend, "2027-03-12 12:00", false, "2027-03-12 22:00 +01:00", ""},
		{"never closes", always, "2027-03-12 12:00", true, "2027-03-12 12:00 +00:00", ""},
		// 2027-03-28: Berlin skips 02:00-03:00; the whole range is in the gap.
		{"range inside the spring gap is empty", dstNight, "2027-03-28 03:00", false, "2027-04-04 02:30 +02:00", ""},
		{"range in the autumn repeat is the first pass", dstNight, "2027-10-31 02:40 +02:00", true, "2027-10-31 02:40 +02:00", "2027-10-31 02:45 +02:00"},
		{"second pass of the repeat is outside", dstNight, "2027-10-31 02:40 +01:00", false, "2027-11-07 02:30 +01:00", ""},
		// 2027-11-07: New York repeats 01:00-02:00; the range closes at the first 01:30.
		{"new york autumn crossing midnight", nyNight, "2027-11-07 00:30", true, "2027-11-07 00:30 -04:00", "2027-11-07 01:30 -04:00"},
		{"new york after close in the repeat", nyNight, "2027-11-07 01:20 -05:00", false, "2027-11-13 23:00 -05:00", ""},
		{"invalid window", Window{}, "2027-03-12 12:00", false, "never", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := mustLoc(t, "UTC")
			if tt.w.TZ != "" {
				loc = mustLoc(t, tt.w.TZ)
			}
			tm := at(t, loc, tt.t)
			if got := tt.w.InWindow(tm); got != tt.in {
				t.Errorf("InWindow(%v) = %v, want %v", tm, got, tt.in)
			}
			fmtT := func(u time.Time) string {
				if u.IsZero() {
					return "never"
				}
				return u.In(loc).Format("2006-01-02 15:04 -07:00")
			}
			if got := fmtT(tt.w.NextOpen(tm)); got != tt.nextOpen {
				t.Errorf("NextOpen(%v) = %s, want %s", tm, got, tt.nextOpen)
			}
			c, ok := tt.w.CloseAfter(tm)
			got := ""
			if ok {
				got = fmtT(c)
			}
			if got != tt.closeAt {
				t.Errorf("CloseAfter(%v) = %q, want %q", tm, got, tt.closeAt)
			}
		})
	}
}

// TestWindowYear checks InWindow against NextOpen and CloseAfter through
// 2028 in Berlin (every 15 minutes; the costly checks at each opening and
// closing and every 3 hours): an instant is inside exactly when NextOpen
// returns it, and CloseAfter is the first instant after it that is outside.
func TestWindowYear(t *testing.T) {
	w := Window{TZ: "Europe/Berlin", Ranges: []Range{
		{Weekdays: weekdays, Start: "22:00", End: "02:30"},
		{Weekdays: []Weekday{Saturday}, Start: "01:00", End: "03:15"},
	}}
	loc := mustLoc(t, w.TZ)
	step := 15 * time.Minute // every edge of the window is on the grid
	opens := 0
	prevIn := false
	for tm := time.Date(2028, 1, 1, 0, 0, 0, 0, loc); tm.Year() == 2028; tm = tm.Add(step) {
		in := w.InWindow(tm)
		edge := in != prevIn
		if in && !prevIn {
			opens++
		}
		prevIn = in
		if !edge && (tm.Minute() != 0 || tm.Hour()%3 != 0) { // the expensive checks at edges and every 3 hours
			continue
		}
		if no := w.NextOpen(tm); in != no.Equal(tm) || no.Before(tm) {
			t.Fatalf("at %v: InWindow %v, NextOpen %v", tm, in, no)
		}
		c, ok := w.CloseAfter(tm)
		if ok != in {
			t.Fatalf("at %v: InWindow %v, CloseAfter ok %v", tm, in, ok)
		}
		if ok && (!c.After(tm) || w.InWindow(c) || !w.InWindow(c.Add(-time.Second))) {
			t.Fatalf("at %v: CloseAfter %v is not the end of the opening", tm, c)
		}
	}
	// One opening per Mon-Fri night of 2028 (260 weekdays: the leap year
	// starts on a Saturday; Saturday's range merges with Friday's night,
	// from 22:00 Fri to 03:15 Sat) plus the opening that started on
	// 2027-12-31 and is already open at midnight.
	if want := 260 + 1; opens != want {
		t.Errorf("%d openings in 2028, want %d", opens, want)
	}
}

func TestWindowValidate(t *testing.T) {
	tests := []struct {
		name string
		w    Window
		want []string
	}{
		{"valid", Window{Ranges: []Range{{Weekdays: []Weekday{1}, Start: "23:50", End: "00:05"}}}, nil},
		{"no ranges", Window{}, []string{"ranges: at least one range is required"}},
		{"bad zone", Window{TZ: "Nowhere", Ranges: []Range{{Weekdays: []Weekday{1}, Start: "00:00", End: "24:00"}}}, []string{`tz: unknown time zone "Nowhere"`}},
		{"no weekdays", Window{Ranges: []Range{{Start: "01:00", End: "02:00"}}}, []string{"ranges[0].weekdays: at least one weekday is required"}},
		{"bad weekdays", Window{Ranges: []Range{{Weekdays: []Weekday{2, 2, -1}, Start: "01:00", End: "02:00"}}}, []string{
			"ranges[0].weekdays[1]: Tue is listed twice", "ranges[0].weekdays[2]: is -1, must be 0 (Sun)–6 (Sat)"}},
		{"bad clocks", Window{Ranges: []Range{{Weekdays: []Weekday{1}, Start: "24:00", End: "7pm"}}}, []string{
			`ranges[0].start: "24:00" is not a time of day (00:00–23:59)`, `ranges[0].end: "7pm" is not HH:MM`}},
		{"too short", Window{Ranges: []Range{{Weekdays: []Weekday{1}, Start: "10:00", End: "10:14"}}}, []string{
			"ranges[0].end: range 10:00–10:14 lasts 14 minutes, must be at least 15"}},
		{"too short across midnight", Window{Ranges: []Range{{Weekdays: []Weekday{1}, Start: "23:55", End: "00:05"}}}, []string{
			"ranges[0].end: range 23:55–00:05 lasts 10 minutes, must be at least 15"}},
		{"start equals end", Window{Ranges: []Range{{Weekdays: []Weekday{1}, Start: "10:00", End: "10:00"}}}, []string{
			"ranges[0].end: equals start 10:00: a range must be 15 minutes to 24 hours (use 00:00–24:00 for a whole day)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, fieldErrors(tt.w.Validate())); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
	if diff := cmp.Diff([]string{`outsideWindow: "later" is unknown, must be wait or skip`}, fieldErrors(OutsideWindow("later").Validate())); diff != "" {
		t.Error(diff)
	}
	if diff := cmp.Diff([]string{`overrun: "pause" is unknown, must be stop or continue`}, fieldErrors(Overrun("pause").Validate())); diff != "" {
		t.Error(diff)
	}
	for _, ok := range []error{OutsideWindow("").Validate(), OutsideSkip.Validate(), Overrun("").Validate(), OverrunContinue.Validate()} {
		if ok != nil {
			t.Error(ok)
		}
	}
}

func TestCheckWindow(t *testing.T) {
	night := Window{Ranges: []Range{{Weekdays: weekdays, Start: "22:00", End: "06:00"}}}
	tests := []struct {
		name string
		s    Schedule
		w    Window
		want []string
	}{
		{"weekly inside", Schedule{Kind: KindWeekly, Weekdays: []Weekday{Tuesday, Saturday}, Times: []string{"01:00", "23:00"}}, night, []string{
			"times[1]: 23:00 on [Sat] is outside the window"}},
		{"daily on weekends outside", Schedule{Kind: KindDays, Every: 1, Times: []string{"05:45", "06:00"}}, night, []string{
			"times[0]: 05:45 on [Sun Mon] is outside the window", "times[1]: 06:00 on [Sun Mon Tue Wed Thu Fri Sat] is outside the window"}},
		{"monthly", Schedule{Kind: KindMonthly, LastDay: true, Times: []string{"23:00"}}, Window{Ranges: []Range{{Weekdays: []Weekday{0, 1, 2, 3, 4, 5, 6}, Start: "22:00", End: "24:00"}}}, nil},
		{"minutes limited by the window", Schedule{Kind: KindMinutes, Every: 15}, night, nil},
		{"hours never inside", Schedule{Kind: KindHours, Every: 12}, Window{Ranges: []Range{{Weekdays: weekdays, Start: "01:00", End: "02:00"}}}, []string{
			"every: no scheduled time falls inside the window"}},
		{"cron only on sunday", Schedule{Kind: KindCron, Cron: "0 23 * * 0"}, night, []string{"cron: no scheduled time falls inside the window"}},
		{"cron on monday", Schedule{Kind: KindCron, Cron: "0 23 * * 1"}, night, nil},
		{"zones differ", Schedule{Kind: KindHours, Every: 1, TZ: "Europe/Berlin"}, night, []string{`tz: is "Europe/Berlin" but the window's is "": they must be the same zone`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, fieldErrors(tt.s.CheckWindow(tt.w))); diff != "" {
				t.Errorf("CheckWindow (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWindowJSONRoundTrip(t *testing.T) {
	w := Window{TZ: "Europe/Berlin", Ranges: []Range{{Weekdays: weekdays, Start: "22:00", End: "06:00"}}}
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"ranges":[{"weekdays":["Mon","Tue","Wed","Thu","Fri"],"start":"22:00","end":"06:00"}],"tz":"Europe/Berlin"}`; string(b) != want {
		t.Errorf("JSON %s, want %s", b, want)
	}
	var got Window
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(w, got); diff != "" {
		t.Error(diff)
	}
}
