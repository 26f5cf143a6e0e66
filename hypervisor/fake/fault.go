package fake

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Op names an operation of the fake that a Fault can target.
type Op string

// Operations that faults can target. Each hypervisor method maps to one Op;
// the guest-side helpers (WriteDisk, ReadDisk) and the set-up methods
// (AddVM, AddFileVM) are never faulted.
const (
	OpListVMs          Op = "list-vms"            // Hypervisor.ListVMs
	OpVM               Op = "vm"                  // Hypervisor.VM
	OpSnapshot         Op = "snapshot"            // Hypervisor.Snapshot
	OpOpenDisk         Op = "open-disk"           // Snapshot.OpenDisk
	OpRead             Op = "read"                // ReadAt of a snapshot's Disk
	OpAllocatedExtents Op = "allocated-extents"   // ExtentReporter.AllocatedExtents
	OpChangedExtents   Op = "changed-extents"     // ChangeReporter.ChangedExtents, of snapshot and writable disks
	OpRelease          Op = "release"             // Snapshot.Release (a failed Release leaves the snapshot open)
	OpPower            Op = "power"               // Shutdown, PowerOff, Start
	OpOpenDiskForWrite Op = "open-disk-for-write" // DiskWriter.OpenDiskForWrite
	OpWrite            Op = "write"               // WriteAt of a WritableDisk
	OpFlush            Op = "flush"               // Flush and Close of a WritableDisk
	OpCreate           Op = "create"              // Creator.CreateVM
)

// ErrInjected is the error of a Fault whose Err is nil (and whose Delay is
// zero).
var ErrInjected = errors.New("fake: injected fault")

// Fault makes matching calls fail or slow down, so that tests can exercise
// error paths: a snapshot that fails, the third read of a disk that fails,
// a release that hangs until its context ends.
//
// A call matches when its operation is Op and its VM and disk are VMID and
// DiskID. An empty VMID or DiskID matches any; calls that concern no VM
// (ListVMs, CreateVM) or no disk (Snapshot, Release, power) are matched
// only by an empty VMID or DiskID.
//
// The first After matching calls proceed untouched; the next Times
// matching calls are faulted (Times 0 means once, a negative Times means
// every matching call from then on). A faulted call first waits Delay
// (returning the context's error if its context ends first; calls without
// a context, such as ReadAt, WriteAt and Close, just wait), then fails
// with an error wrapping Err, or with ErrInjected if Err is nil and Delay
// is zero. A fault with a nil Err and a Delay only delays.
//
// Where several faults match a call, each counts it, and the first
// injected one that is due applies.
type Fault struct {
	Op     Op
	VMID   string
	DiskID string
	After  int
	Times  int
	Err    error
	Delay  time.Duration
}

type faultState struct {
	Fault
	calls int // matching calls seen
	fired int // calls faulted
}

func (f *faultState) due() bool {
	return f.calls > f.After && (f.Times < 0 || f.fired < max(f.Times, 1))
}

// faults is the fault table of a Hypervisor. n lets hot paths skip the lock
// when no fault was ever injected.
type faults struct {
	n  atomic.Int32
	mu sync.Mutex
	fs []*faultState
}

// Inject adds a fault. Faults apply in the order they were injected.
func (h *Hypervisor) Inject(f Fault) {
	h.faults.mu.Lock()
	h.faults.fs = append(h.faults.fs, &faultState{Fault: f})
	h.faults.n.Store(int32(len(h.faults.fs)))
	h.faults.mu.Unlock()
}

// ClearFaults removes every injected fault.
func (h *Hypervisor) ClearFaults() {
	h.faults.mu.Lock()
	h.faults.fs = nil
	h.faults.n.Store(0)
	h.faults.mu.Unlock()
}

// PendingFaults returns the injected faults that have not yet faulted as
// many calls as they were told to (for a negative Times: that never
// faulted a call), so a test can check that its faults were exercised.
func (h *Hypervisor) PendingFaults() []Fault {
	h.faults.mu.Lock()
	defer h.faults.mu.Unlock()
	var out []Fault
	for _, f := range h.faults.fs {
		if (f.Times < 0 && f.fired == 0) || (f.Times >= 0 && f.fired < max(f.Times, 1)) {
			out = append(out, f.Fault)
		}
	}
	return out
}

// hit applies the faults due for a call; nil means proceed.
func (h *Hypervisor) hit(ctx context.Context, op Op, vmID, diskID string) error {
	if h.faults.n.Load() == 0 {
		return nil
	}
	h.faults.mu.Lock()
	var due *faultState
	for _, f := range h.faults.fs {
		if f.Op != op || (f.VMID != "" && f.VMID != vmID) || (f.DiskID != "" && f.DiskID != diskID) {
			continue
		}
		f.calls++
		if due == nil && f.due() {
			f.fired++
			due = f
		}
	}
	h.faults.mu.Unlock()
	if due == nil {
		return nil
	}
	if due.Delay > 0 {
		t := time.NewTimer(due.Delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("fake: %s: %w", op, ctx.Err())
		}
		if due.Err == nil {
			return nil
		}
	}
	err := due.Err
	if err == nil {
		err = ErrInjected
	}
	where := ""
	if vmID != "" {
		where = fmt.Sprintf(" of vm %q", vmID)
	}
	if diskID != "" {
		where += fmt.Sprintf(" disk %q", diskID)
	}
	return fmt.Errorf("fake: %s%s: injected fault: %w", op, where, err)
}
