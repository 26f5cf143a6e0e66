package schedule

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzSchedule decodes arbitrary JSON as a Schedule and a Window: nothing
// panics, a valid schedule's Next is after its argument, and the window's
// methods agree with each other.
func FuzzSchedule(f *testing.F) {
	f.Add([]byte(`{"kind":"minutes","every":15,"tz":"Europe/Berlin"}`), []byte(`{"ranges":[{"weekdays":["Mon"],"start":"22:00","end":"06:00"}]}`), int64(1806000000))
	f.Add([]byte(`{"kind":"monthly","days":[31],"lastDay":true,"times":["02:30"],"tz":"America/New_York"}`), []byte(`{"ranges":[{"weekdays":["Sun"],"start":"02:00","end":"03:00"}],"tz":"America/New_York"}`), int64(1825000000))
	f.Add([]byte(`{"kind":"cron","cron":"*/15 2 29 2 *"}`), []byte(`{"ranges":[{"weekdays":["Sat","Sun"],"start":"00:00","end":"24:00"}]}`), int64(0))
	f.Add([]byte(`{"kind":"days","every":3,"startDate":"2028-02-29","times":["+1:00","00:00"]}`), []byte(`{}`), int64(-1))
	f.Fuzz(func(t *testing.T, sj, wj []byte, unix int64) {
		at := time.Unix(unix%(200*365*86400), 0)
		var s Schedule
		if json.Unmarshal(sj, &s) == nil && s.Validate() == nil {
			if n := s.Next(at); !n.IsZero() && !n.After(at) {
				t.Fatalf("Next(%v) = %v", at, n)
			}
		}
		var w Window
		if json.Unmarshal(wj, &w) != nil || w.Validate() != nil {
			return
		}
		in := w.InWindow(at)
		if open := w.NextOpen(at); open.IsZero() || open.Before(at) || in != open.Equal(at) {
			t.Fatalf("at %v: InWindow %v, NextOpen %v", at, in, open)
		}
		if end, ok := w.CloseAfter(at); ok && (!in || !end.After(at) || w.InWindow(end)) {
			t.Fatalf("at %v: InWindow %v, CloseAfter %v", at, in, end)
		}
	})
}
