// Package plan defines backup plans (what, where, when, how, how long),
// their validation, and the Store that keeps them.
//
// # Terms
//
// A Plan names its backup objects (VM IDs and label selectors, resolved at
// each run by Objects.Resolve), the repository URL it writes to, an
// incremental schedule and an optional full schedule (runs at the full
// schedule's times read every block; all others are incremental), an
// optional backup window with its outside-window and overrun policies,
// retention, compression, consistency, per-run limits and a state
// (enabled, paused, stopped), after the ACOS backup service's plan model.
//
// # Validation
//
// Validate reports every problem at once, each a *FieldError whose Field
// is the JSON path of the offending value ("incremental.every",
// "window.ranges[0].end", "retention.keepLast") and whose Rule names the
// rule and the allowed range. The error wraps ErrInvalid; Problems lists
// the FieldErrors. Zero values mean "the default" wherever a default
// exists (state enabled, consistency crash, codec zstd, limits from the
// Service); a retention rule must be chosen explicitly.
//
// # JSON
//
// Plans round-trip through encoding/json unchanged. Durations are strings
// ("1h30m"), weekdays are names ("Mon"), times of day are "HH:MM".
//
// # Store
//
// A Store keeps plans with optimistic concurrency: each write names the
// version it is based on and fails with ErrConflict if another writer got
// there first. BlobStore keeps them in a gocloud.dev/blob bucket (the
// repository's, by default under plans/) using only IfNotExist writes
// (link(2) on a local directory, see BlobStoreOptions.LocalDir); its doc
// explains why that is race-safe. NewMemStore is the same on mem://.
package plan
