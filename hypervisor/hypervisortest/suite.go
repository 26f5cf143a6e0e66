package hypervisortest

import (
	"context"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// SeedEnv names the environment variable that fixes the seed of the suite's
// random writes. Run logs the seed it uses; set the variable to that value to
// replay a failure.
const SeedEnv = "HYPERVISORTEST_SEED"

// Run runs the conformance suite against the backend that mk makes. Every
// subtest calls mk for a fresh Harness and closes it at its end.
//
// The subtests, by name (the names Skipper.SkipTest receives):
//
//	VMs                         NewVM, ListVMs and VM agree; unknown ids give ErrNotFound
//	NotFound                    unknown VMs and disks give ErrNotFound everywhere
//	Snapshot/Info               ids, frozen VM description, consistency taken
//	Snapshot/Isolation          writes before a snapshot are in it, writes after are not
//	Snapshot/WritesDuringReads  concurrent reads of a snapshot while the guest writes
//	Snapshot/ReleaseDuringReads reads racing Release fail or return the snapshot's data
//	Snapshot/Release            Release twice, Release with a cancelled context, no leaks
//	Snapshot/Consistency        application consistency works or gives ErrUnsupported / falls back with a Note
//	ReadAt/Semantics            io.ReaderAt rules at and past the end, unaligned reads
//	ReadAt/Concurrent           concurrent ReadAt on one Disk
//	Extents                     AllocatedExtents cover every non-zero byte
//	Changes/Random              randomised writes; ChangedExtents never misses one, over-reports at most ChangeGranularity
//	Changes/NoWrites            no writes, no changes; disks are tracked separately
//	Changes/FailedBackups       a token stays valid across snapshots released unused
//	Changes/InvalidTokens       garbage tokens give ErrTokenInvalid
//	Changes/Reset               tokens from before TrackingResetter.ResetChangeTracking give ErrTokenInvalid
//	Cancel                      a cancelled context gives an error wrapping context.Canceled
//	Power                       PowerOff, Start, Shutdown reach their states and are idempotent
//	Power/Shutdown              the graceful part of Power
//	DiskWriter                  a running VM is refused with ErrConflict; writes land; ChangeReporter
//	Create                      a created VM has the requested configuration and zero-filled disks; writes land
//
// Disks are a few MiB, so the suite runs in seconds even against a real
// hypervisor. Random choices come from a seed that is logged; set the
// environment variable named by SeedEnv to replay it.
//
// VMs created through Creator are named with the prefix "hvtest-"; a
// harness for a shared backend should delete them in Close.
func Run(t *testing.T, mk MakeHarness) {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(SeedEnv); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", SeedEnv, s, err)
		}
		seed = v
	}
	t.Logf("hypervisortest: seed %d (set %s=%d to replay)", seed, SeedEnv, seed)
	root := t.Name()

	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"VMs", testVMs},
		{"NotFound", testNotFound},
		{"Snapshot", testSnapshot},
		{"ReadAt", testReadAt},
		{"Extents", testExtents},
		{"Changes", testChanges},
		{"Cancel", testCancel},
		{"Power", testPower},
		{"DiskWriter", testDiskWriter},
		{"Create", testCreate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, mk, root, seed)
			if e == nil {
				return
			}
			tc.fn(t, e)
		})
	}
}

// env is one subtest's view of the backend under test.
type env struct {
	ctx  context.Context
	h    Harness
	hv   hypervisor.Hypervisor
	rng  *rand.Rand // seeded per (sub)subtest, so one can be replayed alone
	seed uint64
	root string
	n    int // VMs made so far, for names
}

func newEnv(t *testing.T, mk MakeHarness, root string, seed uint64) *env {
	t.Helper()
	ctx := t.Context()
	e := &env{ctx: ctx, root: root, seed: seed}
	h, err := mk(ctx, t)
	if err != nil {
		t.Fatalf("make harness: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close harness: %v", err)
		}
	})
	e.h = h
	e.hv = h.Hypervisor()
	if e.hv == nil {
		t.Fatal("Harness.Hypervisor returned nil")
	}
	if e.skipped(t) {
		return nil
	}
	e.reseed(t)
	return e
}

// reseed seeds e.rng from the suite's seed and t's name, so a subtest
// draws the same writes whether it runs alone or with the others.
func (e *env) reseed(t *testing.T) {
	f := fnv.New64a()
	f.Write([]byte(strings.TrimPrefix(t.Name(), e.root)))
	e.rng = rand.New(rand.NewPCG(e.seed, f.Sum64()))
}

// skipped skips t if the harness implements Skipper and asks to; it is
// called at the start of every subtest.
func (e *env) skipped(t *testing.T) bool {
	t.Helper()
	s, ok := e.h.(Skipper)
	if !ok {
		return false
	}
	name := strings.TrimPrefix(t.Name(), e.root+"/")
	if reason := s.SkipTest(name); reason != "" {
		t.Skipf("harness skips %s: %s", name, reason)
		return true
	}
	return false
}

// run runs a sub-subtest sharing e's harness.
func (e *env) run(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		if e.skipped(t) {
			return
		}
		e.reseed(t)
		fn(t)
	})
}

// newVM makes a running VM with disks of the given sizes and checks what
// NewVM returned.
func (e *env) newVM(t *testing.T, sizes ...int64) hypervisor.VM {
	t.Helper()
	e.n++
	name := fmt.Sprintf("hvtest-%d-%x", e.n, e.rng.Uint32())
	vm, err := e.h.NewVM(e.ctx, name, sizes)
	if err != nil {
		t.Fatalf("Harness.NewVM(%q, %v): %v", name, sizes, err)
	}
	if vm.ID == "" {
		t.Fatalf("Harness.NewVM(%q): empty VM id", name)
	}
	if len(vm.Disks) != len(sizes) {
		t.Fatalf("Harness.NewVM(%q): %d disks, want %d", name, len(vm.Disks), len(sizes))
	}
	seen := map[string]bool{}
	for i, d := range vm.Disks {
		if d.Size != sizes[i] {
			t.Errorf("Harness.NewVM(%q): disk %d (%q) has size %d, want %d", name, i, d.ID, d.Size, sizes[i])
		}
		if d.ID == "" || seen[d.ID] {
			t.Errorf("Harness.NewVM(%q): disk %d has empty or duplicate id %q", name, i, d.ID)
		}
		seen[d.ID] = true
	}
	if t.Failed() {
		t.FailNow()
	}
	return vm
}

// write writes p at off as the guest and records it in sh.
func (e *env) write(t *testing.T, vm hypervisor.VM, sh *shadow, disk int, off int64, p []byte) {
	t.Helper()
	id := vm.Disks[disk].ID
	if err := e.h.GuestWrite(e.ctx, vm.ID, id, off, p); err != nil {
		t.Fatalf("Harness.GuestWrite(%s, %s, %d bytes at %d): %v", vm.ID, id, len(p), off, err)
	}
	if sh != nil {
		sh.write(disk, off, p)
	}
}

// snapshot takes a snapshot and registers its release at the end of t.
func (e *env) snapshot(t *testing.T, vmID string, opts hypervisor.SnapshotOptions) hypervisor.Snapshot {
	t.Helper()
	s, err := e.hv.Snapshot(e.ctx, vmID, opts)
	if err != nil {
		t.Fatalf("Snapshot(%s, %+v): %v", vmID, opts, err)
	}
	if s == nil {
		t.Fatalf("Snapshot(%s): nil snapshot and nil error", vmID)
	}
	t.Cleanup(func() {
		if err := s.Release(context.WithoutCancel(e.ctx)); err != nil {
			t.Errorf("release snapshot %s: %v", s.Info().ID, err)
		}
	})
	return s
}

// open opens a snapshot's disk and registers its Close.
func (e *env) open(t *testing.T, s hypervisor.Snapshot, diskID string) hypervisor.Disk {
	t.Helper()
	d, err := s.OpenDisk(e.ctx, diskID)
	if err != nil {
		t.Fatalf("OpenDisk(%s) of snapshot %s: %v", diskID, s.Info().ID, err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// openSnapshots returns the harness's count of open snapshots, or -1 if it
// cannot tell.
func (e *env) openSnapshots(t *testing.T) int {
	t.Helper()
	c, ok := e.h.(SnapshotCounter)
	if !ok {
		return -1
	}
	n, err := c.OpenSnapshots(context.WithoutCancel(e.ctx))
	if err != nil {
		t.Fatalf("Harness.OpenSnapshots: %v", err)
	}
	return n
}

// stopVM powers the VM off, or skips t if the backend cannot.
func (e *env) stopVM(t *testing.T, vmID string) hypervisor.PowerController {
	t.Helper()
	pc, ok := e.hv.(hypervisor.PowerController)
	if !ok {
		t.Skip("backend implements no PowerController, so the VM cannot be stopped")
	}
	if err := pc.PowerOff(e.ctx, vmID); err != nil {
		t.Fatalf("PowerOff(%s): %v", vmID, err)
	}
	return pc
}

// shadow is the suite's copy of what the disks of a VM should hold.
type shadow struct {
	disks [][]byte
}

func newShadow(vm hypervisor.VM) *shadow {
	s := &shadow{}
	for _, d := range vm.Disks {
		s.disks = append(s.disks, make([]byte, d.Size))
	}
	return s
}

func (s *shadow) write(disk int, off int64, p []byte) { copy(s.disks[disk][off:], p) }

func (s *shadow) clone() *shadow {
	c := &shadow{}
	for _, d := range s.disks {
		c.disks = append(c.disks, append([]byte(nil), d...))
	}
	return c
}

// checkSnapshotContent reads every disk of s and compares it with sh.
func (e *env) checkSnapshotContent(t *testing.T, what string, s hypervisor.Snapshot, vm hypervisor.VM, sh *shadow) {
	t.Helper()
	for i, di := range vm.Disks {
		d := e.open(t, s, di.ID)
		if d.Size() != di.Size {
			t.Errorf("%s: disk %s: Size() = %d, want %d", what, di.ID, d.Size(), di.Size)
			continue
		}
		got := readAll(t, fmt.Sprintf("%s: disk %s", what, di.ID), d, d.Size())
		compareBytes(t, fmt.Sprintf("%s: disk %s", what, di.ID), got, sh.disks[i])
	}
}

// concurrently runs fn(i) for i in [0, n) in goroutines and waits.
func concurrently(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(i) })
	}
	wg.Wait()
}
