// Package backup is the engine's entry point: a Service that composes a Hypervisor, a Repository and a Scheduler and runs backup and restore jobs.
package backup
