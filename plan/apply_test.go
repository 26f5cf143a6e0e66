package plan

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmbackup/vmbackup/schedule"
)

func TestApplyTo(t *testing.T) {
	t0 := time.Date(2027, 3, 8, 23, 0, 0, 0, time.UTC) // inside 22:00–06:00
	clock := schedule.NewFakeClock(t0)
	var events []schedule.Event
	s := schedule.NewLocal(&schedule.Options{Clock: clock, OnEvent: func(e schedule.Event) { events = append(events, e) }})
	defer s.Close(context.Background())
	ran := make(chan schedule.Run, 10)
	run := func(_ context.Context, r schedule.Run) error { ran <- r; return nil }

	p := valid()
	p.Incremental.TZ, p.Full.TZ, p.Window.TZ = "", "", ""
	p.State = Paused
	lastRun := t0.Add(-time.Hour) // missed runs: no catch-up while paused
	if err := p.ApplyTo(s, lastRun, run); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Status(p.ID); err != nil || !st.Paused {
		t.Fatalf("paused plan: status %+v, %v", st, err)
	}
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, string(e.Kind)+" "+string(e.Reason))
	}
	if diff := cmp.Diff([]string{"missed ", "skipped " + string(schedule.ReasonPaused)}, kinds); diff != "" {
		t.Errorf("paused plan with missed runs: events (-want +got):\n%s", diff)
	}
	p.State = Enabled
	if err := p.ApplyTo(s, lastRun, run); err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(p.ID); st.Paused || st.Next.IsZero() {
		t.Errorf("enabled plan: status %+v", st)
	}
	if r := <-ran; !r.CatchUp {
		t.Errorf("enabled plan with missed runs: first run %+v, want a catch-up", r)
	}
	p.State = Stopped
	for range 2 { // stopping twice is fine
		if err := p.ApplyTo(s, lastRun, run); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Status(p.ID); !errors.Is(err, schedule.ErrUnknownPlan) {
		t.Errorf("stopped plan still scheduled: %v", err)
	}
}
