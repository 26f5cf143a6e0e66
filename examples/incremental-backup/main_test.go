package main

import (
	"context"
	"testing"
)

// TestRun runs the example on a small disk, as a smoke test that it keeps
// working as the library changes.
func TestRun(t *testing.T) {
	*size = 8 << 20
	if err := run(context.Background()); err != nil {
		t.Fatal(err)
	}
}
