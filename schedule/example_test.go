package schedule_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/vmbackup/vmbackup/schedule"
)

// Daily at 02:30 in Berlin: on the night the clocks jump from 02:00 to
// 03:00 the run is made at 03:00, not lost; on the night 02:00–03:00
// repeats it is made once.
func ExampleSchedule_Next() {
	s := schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"02:30"}, TZ: "Europe/Berlin"}
	if err := s.Validate(); err != nil {
		log.Fatal(err)
	}
	t := time.Date(2027, 3, 27, 12, 0, 0, 0, time.UTC)
	for range 2 {
		t = s.Next(t)
		fmt.Println(t.Format("Mon 2006-01-02 15:04 MST"))
	}
	t = s.Next(time.Date(2027, 10, 30, 12, 0, 0, 0, time.UTC))
	fmt.Println(t.Format("Mon 2006-01-02 15:04 MST"), "then", s.Next(t).Format("Mon 2006-01-02 15:04 MST"))
	// Output:
	// Sun 2027-03-28 03:00 CEST
	// Mon 2027-03-29 02:30 CEST
	// Sun 2027-10-31 02:30 CEST then Mon 2027-11-01 02:30 CET
}

// A window from 22:00 to 06:00 on weekdays: the weekday names the day a
// range starts, so Saturday 05:00 is inside (Friday's night).
func ExampleWindow() {
	w := schedule.Window{Ranges: []schedule.Range{{
		Weekdays: []schedule.Weekday{schedule.Monday, schedule.Tuesday, schedule.Wednesday, schedule.Thursday, schedule.Friday},
		Start:    "22:00", End: "06:00",
	}}}
	sat := time.Date(2027, 3, 13, 5, 0, 0, 0, time.UTC)
	end, _ := w.CloseAfter(sat)
	fmt.Println(w.InWindow(sat), end.Format("Mon 15:04"))
	sun := sat.Add(24 * time.Hour)
	fmt.Println(w.InWindow(sun), w.NextOpen(sun).Format("Mon 15:04"))
	// Output:
	// true Sat 06:00
	// false Mon 22:00
}

// A Local scheduler on a FakeClock: an hour passes in no time. The
// example waits for each run's finished event before moving the clock,
// as a test must: RunFunc returns in its own goroutine.
func ExampleLocal() {
	clock := schedule.NewFakeClock(time.Date(2027, 3, 8, 0, 0, 1, 0, time.UTC))
	done := make(chan schedule.Run, 10)
	finished := make(chan schedule.Event, 10)
	s := schedule.NewLocal(&schedule.Options{Clock: clock, MaxParallel: 2, Logger: slog.New(slog.DiscardHandler), OnEvent: func(e schedule.Event) {
		if e.Kind == schedule.EventFinished {
			finished <- e
		}
	}})
	defer s.Close(context.Background())
	err := s.Start(schedule.Entry{
		PlanID:      "web",
		Incremental: schedule.Schedule{Kind: schedule.KindMinutes, Every: 20},
		Full:        &schedule.Schedule{Kind: schedule.KindDays, Every: 1, Times: []string{"00:40"}},
	}, func(ctx context.Context, r schedule.Run) error {
		done <- r
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	for range 3 {
		clock.Advance(20 * time.Minute)
		r := <-done
		<-finished
		fmt.Println(r.Due.Format("15:04"), "full:", r.Full)
	}
	// Output:
	// 00:20 full: false
	// 00:40 full: true
	// 01:00 full: false
}
