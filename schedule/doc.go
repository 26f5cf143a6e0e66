// Package schedule defines backup schedules and windows (next run, in
// window) and the Scheduler that fires plans.
//
// # Terms
//
// A Schedule says when a plan runs by itself: every N minutes or hours
// counted from local midnight, every N days at times of day, weekly on
// weekdays at times, monthly on dates (or the last day) at times, or a
// 5-field cron expression. A Window is a weekly set of time ranges in
// which runs may start; a range may cross midnight and belongs to the
// weekday it starts on. Both are plain values that serialise to JSON, and
// their methods (Schedule.Next, Window.InWindow, NextOpen, CloseAfter) are
// pure functions of a time, so they are tested over years of instants
// without sleeping.
//
// # Time zones and DST
//
// Every time of a Schedule or Window is a wall-clock time in its TZ (an
// IANA name; empty means UTC). A wall-clock time becomes an instant by one
// rule, used everywhere in the package:
//
//   - a time that does not exist because the clocks jumped forward runs at
//     the first instant after the gap (02:30 on the spring-forward night
//     in Europe/Berlin runs at 03:00 CEST), so no run is lost;
//   - a time that exists twice because the clocks went back runs once, at
//     its first occurrence (02:30 CEST, not again at 02:30 CET), so no run
//     is doubled.
//
// Consequences: several times inside one gap collapse into one run at the
// gap's end (every 15 minutes: 02:00, 02:15, 02:30, 02:45 and 03:00 all
// become one run at 03:00); in the repeated hour interval schedules run
// only during its first pass, so the interval after it is one hour longer.
// Windows follow the same rule for their edges.
//
// # Month ends
//
// A monthly schedule on a date the month lacks (the 31st in April, the
// 30th in February, the 29th in February of a common year) does not run
// that month, like cron; it is never moved to another day, which would
// make two runs land on one date. Set LastDay for the end of every month.
//
// # Scheduler
//
// The Scheduler fires one callback per run of a plan. The in-process
// implementation, Local, keeps its timers on an injectable Clock, so tests
// drive it with a FakeClock whose Advance fires due timers in order,
// deterministically. Every decision that is not a plain start (skipped
// because the previous run is still busy, waiting for or skipped outside
// the window, missed while the process was down, stopped at the window's
// close) is reported as an Event.
package schedule
