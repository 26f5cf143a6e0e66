package hypervisortest

import (
	"fmt"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
)

func (e *env) power(t *testing.T, vmID string) hypervisor.PowerState {
	t.Helper()
	vm, err := e.hv.VM(e.ctx, vmID)
	if err != nil {
		t.Fatalf("VM(%s): %v", vmID, err)
	}
	return vm.Power
}

func testPower(t *testing.T, e *env) {
	pc, ok := e.hv.(hypervisor.PowerController)
	if !ok {
		t.Skip("backend implements no PowerController")
	}
	vm := e.newVM(t, 1*mib)
	steps := []struct {
		name string
		do   func() error
		want hypervisor.PowerState
	}{
		{"PowerOff", func() error { return pc.PowerOff(e.ctx, vm.ID) }, hypervisor.PowerStopped},
		{"PowerOff again", func() error { return pc.PowerOff(e.ctx, vm.ID) }, hypervisor.PowerStopped},
		{"Shutdown of a stopped VM", func() error { return pc.Shutdown(e.ctx, vm.ID) }, hypervisor.PowerStopped},
		{"Start", func() error { return pc.Start(e.ctx, vm.ID) }, hypervisor.PowerRunning},
		{"Start again", func() error { return pc.Start(e.ctx, vm.ID) }, hypervisor.PowerRunning},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := e.power(t, vm.ID); got != st.want {
			t.Fatalf("after %s the VM is %q, want %q", st.name, got, st.want)
		}
	}
	e.run(t, "Shutdown", func(t *testing.T) {
		if err := pc.Shutdown(e.ctx, vm.ID); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		if got := e.power(t, vm.ID); got != hypervisor.PowerStopped {
			t.Fatalf("after Shutdown the VM is %q, want %q", got, hypervisor.PowerStopped)
		}
		if err := pc.Start(e.ctx, vm.ID); err != nil {
			t.Fatalf("Start after Shutdown: %v", err)
		}
		if got := e.power(t, vm.ID); got != hypervisor.PowerRunning {
			t.Fatalf("after Start the VM is %q, want %q", got, hypervisor.PowerRunning)
		}
	})
}

func testDiskWriter(t *testing.T, e *env) {
	dw, ok := e.hv.(hypervisor.DiskWriter)
	if !ok {
		t.Skip("backend implements no DiskWriter")
	}
	vm := e.newVM(t, 2*mib, 1*mib)
	sh := newShadow(vm)
	for range 6 {
		off, p := randWrite(e.rng, vm.Disks[0].Size)
		e.write(t, vm, sh, 0, off, p)
	}
	w, err := dw.OpenDiskForWrite(e.ctx, vm.ID, vm.Disks[0].ID)
	if err == nil {
		w.Close()
	}
	errIs(t, "OpenDiskForWrite of a running VM", err, hypervisor.ErrConflict)

	// The restore point: a snapshot with change tokens, if the backend
	// tracks changes. The guest then writes on.
	var m *mark
	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	if ct, ok := e.open(t, s, vm.Disks[0].ID).(hypervisor.ChangeTracker); ok && ct.ChangeToken() != "" {
		m = newMark("the restore point", []hypervisor.ChangeTracker{ct}, sh)
	}
	s.Release(e.ctx)
	for range 4 {
		off, p := randWrite(e.rng, vm.Disks[0].Size)
		e.write(t, vm, sh, 0, off, p)
		if m != nil {
			m.wrote(0, off, len(p))
		}
	}
	e.stopVM(t, vm.ID)

	size := vm.Disks[0].Size
	w, err = dw.OpenDiskForWrite(e.ctx, vm.ID, vm.Disks[0].ID)
	if err != nil {
		t.Fatalf("OpenDiskForWrite of a stopped VM: %v", err)
	}
	closed := false
	defer func() {
		if !closed {
			w.Close()
		}
	}()
	if w.Size() != size {
		t.Errorf("WritableDisk.Size() = %d, want %d", w.Size(), size)
	}
	compareBytes(t, "WritableDisk content before writing", readAll(t, "WritableDisk", w, size), sh.disks[0])
	er, hasER := w.(hypervisor.ExtentReporter)
	if hasER {
		e.checkAllocated(t, "WritableDisk.AllocatedExtents before writing", er, w, sh.disks[0])
	}
	cr, hasCR := w.(hypervisor.ChangeReporter)
	if hasCR && m != nil {
		e.checkChanges(t, "WritableDisk before writing", cr, m, 0, size, sh.disks[0])
		_, err := cr.ChangedExtents(e.ctx, "hvtest-garbage")
		errIs(t, "WritableDisk.ChangedExtents(garbage)", err, hypervisor.ErrTokenInvalid)
	}

	// Restore: write, read back, flush, write more, close.
	for i := range 10 {
		off, p := randWrite(e.rng, size)
		if n, err := w.WriteAt(p, off); err != nil || n != len(p) {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
		}
		sh.write(0, off, p)
		if m != nil {
			m.wrote(0, off, len(p))
		}
		if i == 4 {
			if err := w.Flush(e.ctx); err != nil {
				t.Fatalf("Flush: %v", err)
			}
		}
	}
	if n, err := w.WriteAt(make([]byte, 4096), size-100); err == nil {
		t.Errorf("WriteAt across the end of the disk = %d, nil; want an error", n)
	}
	// A failed write beyond the end may have written the part within the
	// disk; the suite cannot tell, so it overwrites that part.
	if _, err := w.WriteAt(sh.disks[0][size-100:], size-100); err != nil {
		t.Fatalf("WriteAt of the last 100 bytes: %v", err)
	}
	if m != nil {
		m.wrote(0, size-100, 100)
	}
	compareBytes(t, "WritableDisk.ReadAt after writing", readAll(t, "WritableDisk", w, size), sh.disks[0])
	if hasER {
		e.checkAllocated(t, "WritableDisk.AllocatedExtents after writing", er, w, sh.disks[0])
	}
	if n, err := w.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
		t.Errorf("WritableDisk.ReadAt at Size() = %d, %v; want 0, io.EOF", n, err)
	}
	if hasCR && m != nil {
		e.checkChanges(t, "WritableDisk after writing", cr, m, 0, size, sh.disks[0])
	}
	if err := w.Flush(e.ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	closed = true
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// The writes landed: a fresh open and a new snapshot see them, and
	// the other disk is untouched.
	w2, err := dw.OpenDiskForWrite(e.ctx, vm.ID, vm.Disks[0].ID)
	if err != nil {
		t.Fatalf("OpenDiskForWrite again: %v", err)
	}
	compareBytes(t, "WritableDisk reopened", readAll(t, "WritableDisk", w2, size), sh.disks[0])
	if err := w2.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	e.checkSnapshotContent(t, "snapshot after the restore", s2, vm, sh)
	// The next incremental backup must see what the restore wrote.
	if m != nil {
		if ct, ok := e.open(t, s2, vm.Disks[0].ID).(hypervisor.ChangeTracker); ok {
			e.checkChanges(t, "snapshot after the restore", ct, m, 0, size, sh.disks[0])
		}
	}
}

func testCreate(t *testing.T, e *env) {
	c, ok := e.hv.(hypervisor.Creator)
	if !ok {
		t.Skip("backend implements no Creator")
	}
	spec := hypervisor.CreateSpec{
		Name:     fmt.Sprintf("hvtest-create-%x", e.rng.Uint32()),
		CPUs:     2,
		MemoryB:  256 * mib,
		Firmware: "bios",
		Disks: []hypervisor.DiskInfo{
			{ID: "ignored", Name: "system", Size: 3 * mib, Bus: "virtio", BootOrder: 1},
			{Name: "data", Size: 1 * mib, Bus: "virtio"},
		},
		NICs: []hypervisor.NIC{
			{Model: "virtio", Connected: false},
			{Model: "virtio", Connected: false},
		},
	}
	if a, ok := e.h.(SpecAdjuster); ok {
		a.AdjustCreateSpec(&spec)
	}
	vm, err := c.CreateVM(e.ctx, spec)
	if err != nil {
		t.Fatalf("CreateVM(%+v): %v", spec, err)
	}
	check := func(what string, vm hypervisor.VM) {
		t.Helper()
		if vm.ID == "" {
			t.Errorf("%s: empty VM id", what)
		}
		type cfg struct {
			Name     string
			CPUs     int
			MemoryB  int64
			Firmware string
			Power    hypervisor.PowerState
			Disks    []int64
			NICs     []bool
		}
		want := cfg{Name: spec.Name, CPUs: spec.CPUs, MemoryB: spec.MemoryB, Firmware: spec.Firmware, Power: hypervisor.PowerStopped}
		got := cfg{Name: vm.Name, CPUs: vm.CPUs, MemoryB: vm.MemoryB, Firmware: vm.Firmware, Power: vm.Power}
		for _, d := range spec.Disks {
			want.Disks = append(want.Disks, d.Size)
		}
		for _, d := range vm.Disks {
			got.Disks = append(got.Disks, d.Size)
		}
		for _, n := range spec.NICs {
			want.NICs = append(want.NICs, n.Connected)
		}
		for _, n := range vm.NICs {
			got.NICs = append(got.NICs, n.Connected)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: the created VM differs from the spec (-spec +created; Disks are sizes, NICs Connected):\n%s", what, diff)
		}
		seen := map[string]bool{}
		for i, d := range vm.Disks {
			if d.ID == "" || seen[d.ID] {
				t.Errorf("%s: disk %d has an empty or duplicate id %q", what, i, d.ID)
			}
			seen[d.ID] = true
		}
		for i, n := range vm.NICs {
			if i < len(spec.NICs) && spec.NICs[i].Model != "" && n.Model != "" && n.Model != spec.NICs[i].Model {
				t.Errorf("%s: NIC %d has model %q, want %q", what, i, n.Model, spec.NICs[i].Model)
			}
		}
	}
	check("CreateVM", vm)
	got, err := e.hv.VM(e.ctx, vm.ID)
	if err != nil {
		t.Fatalf("VM(%s) of the created VM: %v", vm.ID, err)
	}
	check("VM", got)
	if diff := cmp.Diff(summarize(vm), summarize(got)); diff != "" {
		t.Errorf("VM(%s) differs from what CreateVM returned (-CreateVM +VM):\n%s", vm.ID, diff)
	}
	if t.Failed() {
		t.FailNow()
	}
	// The new disks are zero-filled.
	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	e.checkSnapshotContent(t, "snapshot of the created VM", s, vm, newShadow(vm))

	// A rebuild then writes the disks through DiskWriter.
	dw, ok := e.hv.(hypervisor.DiskWriter)
	if !ok {
		return
	}
	sh := newShadow(vm)
	for i, di := range vm.Disks {
		w, err := dw.OpenDiskForWrite(e.ctx, vm.ID, di.ID)
		if err != nil {
			t.Fatalf("OpenDiskForWrite(%s) of the created VM: %v", di.ID, err)
		}
		for range 3 {
			off, p := randWrite(e.rng, di.Size)
			if _, err := w.WriteAt(p, off); err != nil {
				w.Close()
				t.Fatalf("WriteAt(%d bytes at %d) to the created VM: %v", len(p), off, err)
			}
			sh.write(i, off, p)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	}
	s = e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	e.checkSnapshotContent(t, "snapshot of the created VM after writing it", s, vm, sh)
}
