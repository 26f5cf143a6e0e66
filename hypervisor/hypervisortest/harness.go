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

// The interfaces below are optional: a Harness implements them to let the
// suite check more. Run finds them by type assertion on the Harness.

// Skipper lets a Harness skip subtests its backend cannot run in its test
// environment, for instance "Power/Shutdown" against a VM without a guest
// OS that would honour an ACPI shutdown request.
type Skipper interface {
	// SkipTest returns a non-empty reason to skip the subtest named name.
	// name is the subtest's path below Run, e.g. "Power/Shutdown"; see
	// the suite's doc for the names.
	SkipTest(name string) (reason string)
}

// SnapshotCounter lets the suite check that snapshots are not leaked: after
// Release, after a cancelled Snapshot call, after Release with a cancelled
// context.
type SnapshotCounter interface {
	// OpenSnapshots returns how many snapshots of the harness's VMs the
	// backend holds (taken and not released).
	OpenSnapshots(ctx context.Context) (int, error)
}

// TrackingResetter lets the suite check that change tokens become invalid
// when change tracking is reset.
type TrackingResetter interface {
	// ResetChangeTracking makes the backend forget the change tracking of
	// every disk of the VM, as a crash, a resize or an administrator
	// would. Tokens issued before must afterwards give ErrTokenInvalid.
	ResetChangeTracking(ctx context.Context, vmID string) error
}

// QuiesceReporter tells the suite whether VMs made by NewVM can be quiesced,
// so that it checks application consistency exactly instead of accepting
// either outcome.
type QuiesceReporter interface {
	// CanQuiesce reports whether an application-consistent snapshot of a
	// running VM made by NewVM must succeed.
	CanQuiesce() bool
}

// SpecAdjuster lets a Harness fill in the backend-specific parts of the
// CreateSpec the suite passes to Creator.CreateVM: a placement and network
// names that exist on the backend. The suite then checks the created VM
// against the adjusted spec.
type SpecAdjuster interface {
	AdjustCreateSpec(spec *hypervisor.CreateSpec)
}
