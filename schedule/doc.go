// Package schedule defines backup schedules and windows (next run, in window) and the Scheduler that fires plans.
package schedule
