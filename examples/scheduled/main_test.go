package main

import (
	"context"
	"testing"
)

// TestRun runs two simulated days on small disks, as a smoke test that the
// example keeps working as the library changes.
func TestRun(t *testing.T) {
	*size, *days = 4<<20, 2
	if err := run(context.Background()); err != nil {
		t.Fatal(err)
	}
}
