package hypervisortest

import (
	"context"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Harness adapts one backend to the suite. Run calls MakeHarness once per
// subtest and Close at its end, so each subtest starts from a clean backend.
type Harness interface {
	// Hypervisor returns the backend under test. Optional abilities are
	// found by type assertion on it; the suite skips what it lacks.
	Hypervisor() hypervisor.Hypervisor
	// NewVM creates a running VM for a test, with zero-filled disks of the
	// given sizes (multiples of 64 KiB), and returns it as
	// Hypervisor.VM would.
	NewVM(ctx context.Context, name string, diskSizes []int64) (hypervisor.VM, error)
	// GuestWrite writes p at off to the disk as the guest would, while the
	// VM runs and while snapshots of it may be open.
	GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error
	// ChangeGranularity is the change tracking granularity in bytes: the
	// suite allows a ChangeReporter to over-report up to it around each
	// write. Zero means "do not check over-reporting".
	ChangeGranularity() int64
	// Close releases everything the harness made.
	Close() error
}

// MakeHarness makes a fresh Harness for one subtest.
type MakeHarness func(ctx context.Context, t *testing.T) (Harness, error)
