package hypervisortest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
)

// unknownID is an id no backend should know.
const unknownID = "hvtest-no-such-object-3f9c1d"

// vmSummary is the part of a VM description the suite can demand to be the
// same from NewVM, VM, ListVMs and SnapshotInfo.VM.
type vmSummary struct {
	ID, Name string
	// Labels must agree between ListVMs and VM: plans select VMs by
	// label from ListVMs.
	Labels map[string]string
	Disks  []diskSummary
}

type diskSummary struct {
	ID   string
	Size int64
}

func summarize(vm hypervisor.VM) vmSummary {
	s := vmSummary{ID: vm.ID, Name: vm.Name}
	if len(vm.Labels) > 0 {
		s.Labels = vm.Labels
	}
	for _, d := range vm.Disks {
		s.Disks = append(s.Disks, diskSummary{d.ID, d.Size})
	}
	return s
}

func testVMs(t *testing.T, e *env) {
	a := e.newVM(t, 1*mib, 2*mib)
	b := e.newVM(t, 1*mib)
	for _, want := range []hypervisor.VM{a, b} {
		got, err := e.hv.VM(e.ctx, want.ID)
		if err != nil {
			t.Fatalf("VM(%s): %v", want.ID, err)
		}
		if diff := cmp.Diff(summarize(want), summarize(got)); diff != "" {
			t.Errorf("VM(%s) differs from what NewVM returned (-NewVM +VM):\n%s", want.ID, diff)
		}
		if got.Power != hypervisor.PowerRunning {
			t.Errorf("VM(%s).Power = %q, want %q for a VM made by NewVM", want.ID, got.Power, hypervisor.PowerRunning)
		}
	}
	list, err := e.hv.ListVMs(e.ctx)
	if err != nil {
		t.Fatalf("ListVMs: %v", err)
	}
	found := map[string]hypervisor.VM{}
	for _, vm := range list {
		if vm.ID == "" {
			t.Errorf("ListVMs returned a VM with an empty id: %+v", vm)
		}
		if _, dup := found[vm.ID]; dup {
			t.Errorf("ListVMs returned VM %s twice", vm.ID)
		}
		found[vm.ID] = vm
	}
	for _, want := range []hypervisor.VM{a, b} {
		got, ok := found[want.ID]
		if !ok {
			t.Errorf("ListVMs does not list VM %s (%s)", want.ID, want.Name)
			continue
		}
		if diff := cmp.Diff(summarize(want), summarize(got)); diff != "" {
			t.Errorf("ListVMs entry for %s differs from NewVM (-NewVM +ListVMs):\n%s", want.ID, diff)
		}
	}
	_, err = e.hv.VM(e.ctx, unknownID)
	errIs(t, "VM(unknown id)", err, hypervisor.ErrNotFound)
}

func testNotFound(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib)
	e.run(t, "Snapshot", func(t *testing.T) {
		s, err := e.hv.Snapshot(e.ctx, unknownID, hypervisor.SnapshotOptions{})
		if err == nil {
			s.Release(e.ctx)
		}
		errIs(t, "Snapshot(unknown VM)", err, hypervisor.ErrNotFound)
	})
	e.run(t, "OpenDisk", func(t *testing.T) {
		s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
		d, err := s.OpenDisk(e.ctx, unknownID)
		if err == nil {
			d.Close()
		}
		errIs(t, "OpenDisk(unknown disk)", err, hypervisor.ErrNotFound)
	})
	e.run(t, "Power", func(t *testing.T) {
		pc, ok := e.hv.(hypervisor.PowerController)
		if !ok {
			t.Skip("no PowerController")
		}
		errIs(t, "Start(unknown VM)", pc.Start(e.ctx, unknownID), hypervisor.ErrNotFound)
		errIs(t, "PowerOff(unknown VM)", pc.PowerOff(e.ctx, unknownID), hypervisor.ErrNotFound)
		errIs(t, "Shutdown(unknown VM)", pc.Shutdown(e.ctx, unknownID), hypervisor.ErrNotFound)
	})
	e.run(t, "OpenDiskForWrite", func(t *testing.T) {
		dw, ok := e.hv.(hypervisor.DiskWriter)
		if !ok {
			t.Skip("no DiskWriter")
		}
		w, err := dw.OpenDiskForWrite(e.ctx, unknownID, vm.Disks[0].ID)
		if err == nil {
			w.Close()
		}
		errIs(t, "OpenDiskForWrite(unknown VM)", err, hypervisor.ErrNotFound)
		e.stopVM(t, vm.ID)
		w, err = dw.OpenDiskForWrite(e.ctx, vm.ID, unknownID)
		if err == nil {
			w.Close()
		}
		errIs(t, "OpenDiskForWrite(unknown disk of a stopped VM)", err, hypervisor.ErrNotFound)
	})
}

func testSnapshot(t *testing.T, e *env) {
	e.run(t, "Info", func(t *testing.T) { testSnapshotInfo(t, e) })
	e.run(t, "Isolation", func(t *testing.T) { testSnapshotIsolation(t, e) })
	e.run(t, "WritesDuringReads", func(t *testing.T) { testSnapshotWritesDuringReads(t, e) })
	e.run(t, "ReleaseDuringReads", func(t *testing.T) { testSnapshotReleaseDuringReads(t, e) })
	e.run(t, "Release", func(t *testing.T) { testSnapshotRelease(t, e) })
	e.run(t, "Consistency", func(t *testing.T) { testSnapshotConsistency(t, e) })
}

func testSnapshotInfo(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib, 2*mib)
	s1 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{Name: "hvtest-info"})
	s2 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.CrashConsistent})
	i1, i2 := s1.Info(), s2.Info()
	if i1.ID == "" || i1.ID == i2.ID {
		t.Errorf("snapshot ids %q and %q: want non-empty and distinct", i1.ID, i2.ID)
	}
	for _, i := range []hypervisor.SnapshotInfo{i1, i2} {
		if diff := cmp.Diff(summarize(vm), summarize(i.VM)); diff != "" {
			t.Errorf("snapshot %s: Info().VM differs from the VM (-VM +Info):\n%s", i.ID, diff)
		}
		if i.Consistency != hypervisor.CrashConsistent {
			t.Errorf("snapshot %s: Consistency = %q, want %q (asked for crash consistency)", i.ID, i.Consistency, hypervisor.CrashConsistent)
		}
	}
	// Both snapshots and all their disks may be open at once.
	for _, s := range []hypervisor.Snapshot{s1, s2} {
		for _, di := range vm.Disks {
			d := e.open(t, s, di.ID)
			if d.Size() != di.Size {
				t.Errorf("snapshot %s disk %s: Size() = %d, want %d", s.Info().ID, di.ID, d.Size(), di.Size)
			}
		}
	}
}

func testSnapshotIsolation(t *testing.T, e *env) {
	vm := e.newVM(t, 2*mib, 1*mib)
	sh := newShadow(vm)
	// Before the first snapshot: content in both disks, across a 64 KiB
	// boundary and at the very end.
	for range 3 {
		for d := range vm.Disks {
			off, p := randWrite(e.rng, vm.Disks[d].Size)
			e.write(t, vm, sh, d, off, p)
		}
	}
	e.write(t, vm, sh, 0, 64*kib-100, fill(200, 0xa1))
	e.write(t, vm, sh, 1, vm.Disks[1].Size-10, fill(10, 0xa2))
	want1 := sh.clone()
	s1 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})

	// After it: overwrite what was written, write new places.
	e.write(t, vm, sh, 0, 64*kib-50, fill(100, 0xb1))
	e.write(t, vm, sh, 1, vm.Disks[1].Size-5, fill(5, 0xb2))
	for range 4 {
		for d := range vm.Disks {
			off, p := randWrite(e.rng, vm.Disks[d].Size)
			e.write(t, vm, sh, d, off, p)
		}
	}
	want2 := sh.clone()
	s2 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	for range 4 {
		for d := range vm.Disks {
			off, p := randWrite(e.rng, vm.Disks[d].Size)
			e.write(t, vm, sh, d, off, p)
		}
	}
	e.checkSnapshotContent(t, "first snapshot", s1, vm, want1)
	e.checkSnapshotContent(t, "second snapshot", s2, vm, want2)

	// Releasing the older snapshot leaves the newer one intact, and a
	// new snapshot sees the latest writes.
	if err := s1.Release(e.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	e.write(t, vm, sh, 0, 0, fill(4096, 0xc1))
	e.checkSnapshotContent(t, "second snapshot after the first was released", s2, vm, want2)
	s3 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	e.checkSnapshotContent(t, "third snapshot", s3, vm, sh)
}

// testSnapshotWritesDuringReads reads a snapshot from several goroutines
// while the guest writes on: every read sees the content at the snapshot.
func testSnapshotWritesDuringReads(t *testing.T, e *env) {
	const size = 2 * mib
	vm := e.newVM(t, size)
	sh := newShadow(vm)
	for range 6 {
		off, p := randWrite(e.rng, size)
		e.write(t, vm, sh, 0, off, p)
	}
	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	d := e.open(t, s, vm.Disks[0].ID)
	want := sh.disks[0]

	// The writes are drawn before the goroutines start: e.rng is not
	// safe for concurrent use.
	type write struct {
		off int64
		p   []byte
	}
	var writes []write
	for range 40 {
		off, p := randWrite(e.rng, size)
		writes = append(writes, write{off, p})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, w := range writes {
			if err := e.h.GuestWrite(e.ctx, vm.ID, vm.Disks[0].ID, w.off, w.p); err != nil {
				t.Errorf("GuestWrite: %v", err)
				return
			}
		}
	}()
	concurrently(4, func(i int) {
		buf := make([]byte, 128*kib)
		for pass := 0; pass < 2; pass++ {
			for off := int64(i) * int64(len(buf)); off < size; off += 4 * int64(len(buf)) {
				n, err := d.ReadAt(buf, off)
				if n != len(buf) || (err != nil && err != io.EOF) {
					t.Errorf("ReadAt(%d bytes at %d) = %d, %v", len(buf), off, n, err)
					return
				}
				compareBytes(t, fmt.Sprintf("ReadAt(%d bytes at %d) while the guest writes", len(buf), off), buf, want[off:off+int64(n)])
			}
		}
	})
	<-done
	d2 := e.open(t, s, vm.Disks[0].ID)
	compareBytes(t, "snapshot after the guest's writes", readAll(t, "snapshot", d2, size), want)
}

// testSnapshotReleaseDuringReads releases a snapshot while goroutines
// read it and the guest writes: reads may fail once Release is called, but
// a read that succeeds returns the snapshot's data.
func testSnapshotReleaseDuringReads(t *testing.T, e *env) {
	const size = 1 * mib
	vm := e.newVM(t, size)
	sh := newShadow(vm)
	e.write(t, vm, sh, 0, 0, fill(size, 0x11))
	s, err := e.hv.Snapshot(e.ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	d, err := s.OpenDisk(e.ctx, vm.Disks[0].ID)
	if err != nil {
		s.Release(e.ctx)
		t.Fatalf("OpenDisk: %v", err)
	}
	want := sh.disks[0]
	started := make(chan struct{}, 4)
	stop := make(chan struct{})
	guest := make(chan struct{})
	go func() {
		defer close(guest)
		p := fill(64*kib, 0x22)
		for off := int64(0); ; off = (off + 64*kib) % size {
			select {
			case <-stop:
				return
			default:
			}
			if err := e.h.GuestWrite(e.ctx, vm.ID, vm.Disks[0].ID, off, p); err != nil {
				t.Errorf("GuestWrite: %v", err)
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		concurrently(4, func(i int) {
			buf := make([]byte, 64*kib)
			for j := 0; j < 200; j++ {
				off := int64((i*13+j*7)%16) * 64 * kib
				n, err := d.ReadAt(buf, off)
				if j == 0 {
					started <- struct{}{}
				}
				if err != nil && err != io.EOF {
					return // failing after Release is allowed
				}
				if !compareBytes(t, fmt.Sprintf("ReadAt(%d bytes at %d) around Release", len(buf), off), buf[:n], want[off:off+int64(n)]) {
					return
				}
			}
		})
	}()
	for range 4 {
		<-started
	}
	if err := s.Release(e.ctx); err != nil {
		t.Errorf("Release while reads are in flight: %v", err)
	}
	<-done
	close(stop)
	<-guest
	d.Close()
}

func fill(n int, b byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = b
	}
	return p
}

func testSnapshotRelease(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib)
	before := e.openSnapshots(t)
	s, err := e.hv.Snapshot(e.ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if n := e.openSnapshots(t); before >= 0 && n != before+1 {
		t.Errorf("after Snapshot the harness counts %d open snapshots, want %d", n, before+1)
	}
	if err := s.Release(e.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := s.Release(e.ctx); err != nil {
		t.Errorf("second Release: %v, want nil", err)
	}
	if n := e.openSnapshots(t); before >= 0 && n != before {
		t.Errorf("after Release the harness counts %d open snapshots, want %d", n, before)
	}

	// Cleanup after cancellation: Release with a cancelled context must
	// still release.
	s, err = e.hv.Snapshot(e.ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if err := s.Release(withCancelled(e.ctx)); err != nil {
		t.Errorf("Release with a cancelled context: %v, want nil", err)
	}
	if n := e.openSnapshots(t); before >= 0 && n != before {
		t.Errorf("after Release with a cancelled context the harness counts %d open snapshots, want %d", n, before)
	}
	s.Release(e.ctx)
}

func testSnapshotConsistency(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib)
	q, exact := e.h.(QuiesceReporter)
	canQuiesce := exact && q.CanQuiesce()

	opts := hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent}
	s, err := e.hv.Snapshot(e.ctx, vm.ID, opts)
	switch {
	case err != nil && errors.Is(err, hypervisor.ErrUnsupported):
		if canQuiesce {
			t.Errorf("application-consistent Snapshot: %v, but the harness says the guest can quiesce", err)
		}
	case err != nil:
		t.Fatalf("application-consistent Snapshot: %v, want success or an error wrapping ErrUnsupported", err)
	default:
		info := s.Info()
		s.Release(e.ctx)
		if info.Consistency != hypervisor.ApplicationConsistent {
			t.Errorf("application-consistent Snapshot without AllowCrashFallback took %q (note %q); want %q or ErrUnsupported",
				info.Consistency, info.Note, hypervisor.ApplicationConsistent)
		}
		if exact && !canQuiesce {
			t.Errorf("application-consistent Snapshot succeeded, but the harness says the guest cannot quiesce")
		}
	}

	opts.AllowCrashFallback = true
	s = e.snapshot(t, vm.ID, opts)
	info := s.Info()
	switch info.Consistency {
	case hypervisor.ApplicationConsistent:
		if exact && !canQuiesce {
			t.Errorf("Snapshot with fallback took an application-consistent snapshot, but the harness says the guest cannot quiesce")
		}
	case hypervisor.CrashConsistent:
		if info.Note == "" {
			t.Errorf("Snapshot fell back to crash consistency without saying why in Info().Note")
		}
		if canQuiesce {
			t.Errorf("Snapshot fell back to crash consistency (%s), but the harness says the guest can quiesce", info.Note)
		}
	default:
		t.Errorf("Snapshot with fallback: Consistency = %q, want %q or %q", info.Consistency, hypervisor.ApplicationConsistent, hypervisor.CrashConsistent)
	}

	bogus := hypervisor.SnapshotOptions{Consistency: "hvtest-bogus", AllowCrashFallback: true}
	s, err = e.hv.Snapshot(e.ctx, vm.ID, bogus)
	if err == nil {
		s.Release(e.ctx)
	}
	errIs(t, "Snapshot with an unknown consistency level", err, hypervisor.ErrUnsupported)
}

func testReadAt(t *testing.T, e *env) {
	const size = 1*mib + 64*kib
	vm := e.newVM(t, size)
	sh := newShadow(vm)
	for range 8 {
		off, p := randWrite(e.rng, size)
		e.write(t, vm, sh, 0, off, p)
	}
	e.write(t, vm, sh, 0, size-3000, fill(3000, 0x5a))
	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	d := e.open(t, s, vm.Disks[0].ID)
	want := sh.disks[0]

	e.run(t, "Semantics", func(t *testing.T) {
		buf := make([]byte, 4096)
		for _, tc := range []struct {
			name    string
			off     int64
			n       int
			wantN   int
			wantEOF bool // io.EOF required; otherwise nil or io.EOF
		}{
			{name: "at start", off: 0, n: 4096, wantN: 4096},
			{name: "unaligned", off: 12345, n: 777, wantN: 777},
			{name: "across 64 KiB", off: 64*kib - 1000, n: 2000, wantN: 2000},
			{name: "to the end exactly", off: size - 4096, n: 4096, wantN: 4096},
			{name: "across the end", off: size - 1000, n: 4096, wantN: 1000, wantEOF: true},
			{name: "at the end", off: size, n: 4096, wantN: 0, wantEOF: true},
			{name: "past the end", off: size + 100, n: 4096, wantN: 0, wantEOF: true},
		} {
			p := buf[:tc.n]
			clear(p)
			n, err := d.ReadAt(p, tc.off)
			if n != tc.wantN {
				t.Errorf("%s: ReadAt(%d bytes at %d) read %d, want %d (err %v)", tc.name, tc.n, tc.off, n, tc.wantN, err)
				continue
			}
			switch {
			case tc.wantEOF && err != io.EOF:
				t.Errorf("%s: ReadAt(%d bytes at %d) error = %v, want io.EOF", tc.name, tc.n, tc.off, err)
			case !tc.wantEOF && err != nil && err != io.EOF:
				t.Errorf("%s: ReadAt(%d bytes at %d) error = %v, want nil", tc.name, tc.n, tc.off, err)
			}
			if tc.off < size {
				compareBytes(t, fmt.Sprintf("%s: ReadAt(%d bytes at %d)", tc.name, tc.n, tc.off), p[:n], want[tc.off:tc.off+int64(n)])
			}
		}
		if n, err := d.ReadAt(buf, -1); err == nil || n != 0 {
			t.Errorf("ReadAt at offset -1 = %d, %v; want 0 and an error", n, err)
		}
	})
	e.run(t, "Concurrent", func(t *testing.T) {
		concurrently(8, func(i int) {
			buf := make([]byte, 200*kib)
			for j := range 40 {
				// Deterministic per goroutine, so no shared rng.
				off := int64((i*7919 + j*104729) * 61 % size)
				n := min(int64(len(buf)), size-off, int64(1+(i*31+j*17)*997%(200*kib)))
				got, err := d.ReadAt(buf[:n], off)
				if got != int(n) || (err != nil && err != io.EOF) {
					t.Errorf("concurrent ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
					return
				}
				compareBytes(t, fmt.Sprintf("concurrent ReadAt(%d bytes at %d)", n, off), buf[:n], want[off:off+n])
			}
		})
	})
}

func testExtents(t *testing.T, e *env) {
	const size = 4 * mib
	vm := e.newVM(t, size, 1*mib)
	sh := newShadow(vm)
	for range 12 {
		d := e.rng.IntN(2)
		off, p := randWrite(e.rng, vm.Disks[d].Size)
		e.write(t, vm, sh, d, off, p)
	}
	e.write(t, vm, sh, 0, size-1, []byte{1})
	e.write(t, vm, sh, 1, 0, []byte{2})
	// A zero write over data: the data is gone, the extent may remain.
	e.write(t, vm, sh, 0, 128*kib, fill(4096, 7))
	e.write(t, vm, sh, 0, 128*kib, make([]byte, 4096))

	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	for i, di := range vm.Disks {
		d := e.open(t, s, di.ID)
		er, ok := d.(hypervisor.ExtentReporter)
		if !ok {
			t.Skip("snapshot disks implement no ExtentReporter")
		}
		e.checkAllocated(t, fmt.Sprintf("AllocatedExtents of disk %s", di.ID), er, d, sh.disks[i])
	}
}

// checkAllocated checks that er's extents cover every non-zero byte of
// want, the disk's content, and that reading only them through d
// reproduces it.
func (e *env) checkAllocated(t *testing.T, what string, er hypervisor.ExtentReporter, d io.ReaderAt, want []byte) {
	t.Helper()
	size := int64(len(want))
	ext, err := er.AllocatedExtents(e.ctx)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !checkExtents(t, what, ext, size) {
		return
	}
	if miss := uncovered(nonZeroSpans(want), toSpans(ext)); len(miss) > 0 {
		t.Errorf("%s = %s miss non-zero bytes at %s", what, fmtSpans(toSpans(ext)), fmtSpans(miss))
	}
	// Bytes outside the extents read as zeros: check that reading
	// through the extents reproduces the disk.
	got := make([]byte, size)
	for _, x := range ext {
		if n, err := d.ReadAt(got[x.Offset:x.End()], x.Offset); n != int(x.Length) || (err != nil && err != io.EOF) {
			t.Fatalf("%s: ReadAt of extent %+v: %d, %v", what, x, n, err)
		}
	}
	compareBytes(t, what+": disk rebuilt from its extents", got, want)
}

func testCancel(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib)
	cctx := withCancelled(e.ctx)
	before := e.openSnapshots(t)
	canceled := func(what string, err error) {
		t.Helper()
		errIs(t, what+" with a cancelled context", err, context.Canceled)
	}
	_, err := e.hv.ListVMs(cctx)
	canceled("ListVMs", err)
	_, err = e.hv.VM(cctx, vm.ID)
	canceled("VM", err)
	s, err := e.hv.Snapshot(cctx, vm.ID, hypervisor.SnapshotOptions{})
	if err == nil {
		s.Release(e.ctx)
	}
	canceled("Snapshot", err)
	if n := e.openSnapshots(t); before >= 0 && n != before {
		t.Errorf("after a cancelled Snapshot the harness counts %d open snapshots, want %d", n, before)
	}

	s = e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	d, err := s.OpenDisk(cctx, vm.Disks[0].ID)
	if err == nil {
		d.Close()
	}
	canceled("OpenDisk", err)
	d = e.open(t, s, vm.Disks[0].ID)
	if er, ok := d.(hypervisor.ExtentReporter); ok {
		_, err := er.AllocatedExtents(cctx)
		canceled("AllocatedExtents", err)
	}
	if ct, ok := d.(hypervisor.ChangeTracker); ok && ct.ChangeToken() != "" {
		_, err := ct.ChangedExtents(cctx, ct.ChangeToken())
		canceled("ChangedExtents", err)
	}
	if c, ok := e.hv.(hypervisor.Creator); ok {
		_, err := c.CreateVM(cctx, hypervisor.CreateSpec{
			Name: fmt.Sprintf("hvtest-cancel-%x", e.rng.Uint32()), CPUs: 1, MemoryB: 128 * mib,
			Disks: []hypervisor.DiskInfo{{Size: 1 * mib}},
		})
		canceled("CreateVM", err)
	}
	pc, ok := e.hv.(hypervisor.PowerController)
	if !ok {
		return
	}
	canceled("PowerOff", pc.PowerOff(cctx, vm.ID))
	canceled("Shutdown", pc.Shutdown(cctx, vm.ID))
	canceled("Start (of a running VM)", pc.Start(cctx, vm.ID))
	dw, ok := e.hv.(hypervisor.DiskWriter)
	if !ok {
		return
	}
	if err := pc.PowerOff(e.ctx, vm.ID); err != nil {
		t.Fatalf("PowerOff: %v", err)
	}
	w, err := dw.OpenDiskForWrite(cctx, vm.ID, vm.Disks[0].ID)
	if err == nil {
		w.Close()
	}
	canceled("OpenDiskForWrite", err)
	w, err = dw.OpenDiskForWrite(e.ctx, vm.ID, vm.Disks[0].ID)
	if err != nil {
		t.Fatalf("OpenDiskForWrite: %v", err)
	}
	defer w.Close()
	canceled("WritableDisk.Flush", w.Flush(cctx))
}
