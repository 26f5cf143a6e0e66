package fake_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
)

const mib = 1 << 20

func mustVM(t *testing.T, h *fake.Hypervisor, name string, sizes ...int64) hypervisor.VM {
	t.Helper()
	desc := hypervisor.VM{Name: name}
	for _, s := range sizes {
		desc.Disks = append(desc.Disks, hypervisor.DiskInfo{Size: s})
	}
	vm, err := h.AddVM(desc)
	if err != nil {
		t.Fatalf("AddVM: %v", err)
	}
	return vm
}

func mustSnapshot(t *testing.T, h *fake.Hypervisor, vmID string) hypervisor.Snapshot {
	t.Helper()
	s, err := h.Snapshot(t.Context(), vmID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	t.Cleanup(func() { s.Release(context.Background()) })
	return s
}

func mustTracker(t *testing.T, s hypervisor.Snapshot, diskID string) hypervisor.ChangeTracker {
	t.Helper()
	d, err := s.OpenDisk(t.Context(), diskID)
	if err != nil {
		t.Fatalf("OpenDisk: %v", err)
	}
	ct, ok := d.(hypervisor.ChangeTracker)
	if !ok {
		t.Fatalf("disk %T implements no ChangeTracker", d)
	}
	return ct
}

func TestAddVM(t *testing.T) {
	h := fake.New(nil)
	vm, err := h.AddVM(hypervisor.VM{
		Name:   "a",
		Labels: map[string]string{"tier": "web"},
		Disks:  []hypervisor.DiskInfo{{Size: mib}, {ID: "disk-1", Size: 2 * mib}},
		NICs:   []hypervisor.NIC{{Model: "virtio"}},
	})
	if err != nil {
		t.Fatalf("AddVM: %v", err)
	}
	want := hypervisor.VM{
		ID:     "vm-1",
		Name:   "a",
		Labels: map[string]string{"tier": "web"},
		Power:  hypervisor.PowerRunning,
		Disks:  []hypervisor.DiskInfo{{ID: "disk-2", Size: mib}, {ID: "disk-1", Size: 2 * mib}},
		NICs:   []hypervisor.NIC{{ID: "nic-1", Model: "virtio", MAC: "52:54:00:00:00:01"}},
	}
	if diff := cmp.Diff(want, vm); diff != "" {
		t.Errorf("AddVM (-want +got):\n%s", diff)
	}
	// The caller's copy is its own.
	vm.Labels["tier"] = "db"
	vm.Disks[0].Size = 1
	got, err := h.VM(t.Context(), "vm-1")
	if err != nil {
		t.Fatalf("VM: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("VM after the caller changed its copy (-want +got):\n%s", diff)
	}

	for _, tc := range []struct {
		name string
		vm   hypervisor.VM
		is   error
	}{
		{"duplicate vm id", hypervisor.VM{ID: "vm-1"}, hypervisor.ErrConflict},
		{"zero disk size", hypervisor.VM{Disks: []hypervisor.DiskInfo{{Size: 0}}}, nil},
		{"duplicate disk id", hypervisor.VM{Disks: []hypervisor.DiskInfo{{ID: "x", Size: 1}, {ID: "x", Size: 1}}}, nil},
	} {
		_, err := h.AddVM(tc.vm)
		if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) {
			t.Errorf("AddVM(%s) = %v, want an error (wrapping %v)", tc.name, err, tc.is)
		}
	}
}

func TestSparseHugeDisk(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	const size = 100 << 30
	vm := mustVM(t, h, "huge", size)
	d := vm.Disks[0].ID
	if err := h.WriteDisk(ctx, vm.ID, d, size-3, []byte("end")); err != nil {
		t.Fatalf("WriteDisk: %v", err)
	}
	if err := h.WriteDisk(ctx, vm.ID, d, 50<<30, []byte("mid")); err != nil {
		t.Fatalf("WriteDisk: %v", err)
	}
	s := mustSnapshot(t, h, vm.ID)
	disk, err := s.OpenDisk(ctx, d)
	if err != nil {
		t.Fatalf("OpenDisk: %v", err)
	}
	ext, err := disk.(hypervisor.ExtentReporter).AllocatedExtents(ctx)
	if err != nil {
		t.Fatalf("AllocatedExtents: %v", err)
	}
	want := []hypervisor.Extent{{Offset: 50 << 30, Length: 64 << 10}, {Offset: size - 64<<10, Length: 64 << 10}}
	if diff := cmp.Diff(want, ext); diff != "" {
		t.Errorf("AllocatedExtents (-want +got):\n%s", diff)
	}
	buf := make([]byte, 10)
	n, err := disk.ReadAt(buf, size-7)
	if n != 7 || err != io.EOF || string(buf[:7]) != "\x00\x00\x00\x00end" {
		t.Errorf("ReadAt at the end = %d, %v, %q", n, err, buf[:n])
	}
	if got, want := h.Stats(), (fake.Stats{Snapshots: 1, Reads: 1, BytesRead: 7}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestTokens(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	a := mustVM(t, h, "a", mib, mib)
	b := mustVM(t, h, "b", mib)
	sa := mustSnapshot(t, h, a.ID)
	sb := mustSnapshot(t, h, b.ID)
	ta0 := mustTracker(t, sa, a.Disks[0].ID)
	ta1 := mustTracker(t, sa, a.Disks[1].ID)
	tb := mustTracker(t, sb, b.Disks[0].ID)

	h.WriteDisk(ctx, a.ID, a.Disks[0].ID, 0, []byte{1})
	later := mustTracker(t, mustSnapshot(t, h, a.ID), a.Disks[0].ID)

	other := fake.New(nil)
	oa := mustVM(t, other, "a", mib)
	otok := mustTracker(t, mustSnapshot(t, other, oa.ID), oa.Disks[0].ID).ChangeToken()

	for _, tc := range []struct {
		name  string
		on    hypervisor.ChangeTracker
		token string
		valid bool
	}{
		{"own", ta0, ta0.ChangeToken(), true},
		{"older on later", later, ta0.ChangeToken(), true},
		{"later on older", ta0, later.ChangeToken(), false},
		{"other disk of the VM", ta0, ta1.ChangeToken(), false},
		{"other VM", ta0, tb.ChangeToken(), false},
		{"other fake", ta0, otok, false},
	} {
		_, err := tc.on.ChangedExtents(ctx, tc.token)
		if tc.valid && err != nil {
			t.Errorf("%s: ChangedExtents: %v", tc.name, err)
		}
		if !tc.valid && !errors.Is(err, hypervisor.ErrTokenInvalid) {
			t.Errorf("%s: ChangedExtents = %v, want ErrTokenInvalid", tc.name, err)
		}
	}

	// A reset invalidates the tokens of open snapshots too.
	h.ResetChangeTracking(a.ID)
	if _, err := later.ChangedExtents(ctx, later.ChangeToken()); !errors.Is(err, hypervisor.ErrTokenInvalid) {
		t.Errorf("ChangedExtents after a reset = %v, want ErrTokenInvalid", err)
	}
	if _, err := tb.ChangedExtents(ctx, tb.ChangeToken()); err != nil {
		t.Errorf("a reset of VM a invalidated VM b's token: %v", err)
	}
}

func TestChangedExtentsGranularity(t *testing.T) {
	ctx := t.Context()
	h := fake.New(&fake.Options{Granularity: 4096})
	vm := mustVM(t, h, "a", mib)
	d := vm.Disks[0].ID
	t0 := mustTracker(t, mustSnapshot(t, h, vm.ID), d).ChangeToken()
	h.WriteDisk(ctx, vm.ID, d, 4095, []byte{1, 2})     // chunks 0 and 1
	h.WriteDisk(ctx, vm.ID, d, 3*4096, []byte{3})      // chunk 3
	h.WriteDisk(ctx, vm.ID, d, mib-1, []byte{4})       // last chunk
	h.WriteDisk(ctx, vm.ID, d, 2*4096+10, []byte(nil)) // empty writes change nothing
	ext, err := mustTracker(t, mustSnapshot(t, h, vm.ID), d).ChangedExtents(ctx, t0)
	if err != nil {
		t.Fatalf("ChangedExtents: %v", err)
	}
	want := []hypervisor.Extent{{Offset: 0, Length: 8192}, {Offset: 3 * 4096, Length: 4096}, {Offset: mib - 4096, Length: 4096}}
	if diff := cmp.Diff(want, ext); diff != "" {
		t.Errorf("ChangedExtents (-want +got):\n%s", diff)
	}
}

func TestOptions(t *testing.T) {
	h := fake.New(&fake.Options{NoExtents: true})
	vm := mustVM(t, h, "a", mib)
	d, err := mustSnapshot(t, h, vm.ID).OpenDisk(t.Context(), vm.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d.(hypervisor.ExtentReporter); ok {
		t.Error("NoExtents: disk implements ExtentReporter")
	}
	if _, ok := d.(hypervisor.ChangeTracker); !ok {
		t.Error("NoExtents: disk implements no ChangeTracker")
	}
	for _, g := range []int64{-1, 100, 3000} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New with Granularity %d did not panic", g)
				}
			}()
			fake.New(&fake.Options{Granularity: g})
		}()
	}
}

func TestConsistency(t *testing.T) {
	ctx := t.Context()
	h := fake.New(&fake.Options{Quiesce: true})
	vm := mustVM(t, h, "a", mib)
	app := hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent}
	s, err := h.Snapshot(ctx, vm.ID, app)
	if err != nil || s.Info().Consistency != hypervisor.ApplicationConsistent {
		t.Fatalf("application-consistent snapshot of a running VM with Quiesce: %v", err)
	}
	s.Release(ctx)
	// A stopped VM has no guest to quiesce.
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Snapshot(ctx, vm.ID, app); !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Errorf("application-consistent snapshot of a stopped VM = %v, want ErrUnsupported", err)
	}
	app.AllowCrashFallback = true
	s, err = h.Snapshot(ctx, vm.ID, app)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(ctx)
	if i := s.Info(); i.Consistency != hypervisor.CrashConsistent || i.Note == "" {
		t.Errorf("fallback snapshot: consistency %q, note %q; want crash and a note", i.Consistency, i.Note)
	}
}

func TestUseAfterRelease(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	vm := mustVM(t, h, "a", mib)
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDisk(ctx, vm.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := s.OpenDisk(ctx, vm.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
	if _, err := d2.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); err != nil {
		t.Errorf("ReadAt of another open of the same disk after one was closed: %v", err)
	}
	s.Release(ctx)
	if _, err := d.ReadAt(make([]byte, 1), 0); err == nil {
		t.Error("ReadAt after Release succeeded")
	}
	if _, err := s.OpenDisk(ctx, vm.Disks[0].ID); err == nil {
		t.Error("OpenDisk after Release succeeded")
	}
}

func TestPowerAndWriters(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	vm := mustVM(t, h, "a", mib)
	d := vm.Disks[0].ID
	if err := h.Suspend(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.OpenDiskForWrite(ctx, vm.ID, d); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("OpenDiskForWrite of a suspended VM = %v, want ErrConflict", err)
	}
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	w, err := h.OpenDiskForWrite(ctx, vm.ID, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.OpenDiskForWrite(ctx, vm.ID, d); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("second OpenDiskForWrite = %v, want ErrConflict", err)
	}
	if err := h.Start(ctx, vm.ID); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("Start while a disk is open for writing = %v, want ErrConflict", err)
	}
	if n, err := w.WriteAt([]byte("abc"), mib-2); err == nil || n != 0 {
		t.Errorf("WriteAt across the end = %d, %v; want 0 and an error", n, err)
	}
	if _, err := w.WriteAt([]byte("abc"), 10); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if err := h.ReadDisk(ctx, vm.ID, d, 10, got); err != nil || string(got) != "abc" {
		t.Errorf("ReadDisk after WriteAt = %q, %v", got, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if got, want := h.Stats(), (fake.Stats{Writes: 1, BytesWritten: 3}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	if _, err := w.WriteAt([]byte("x"), 0); err == nil {
		t.Error("WriteAt after Close succeeded")
	}
	if err := w.Flush(ctx); err == nil {
		t.Error("Flush after Close succeeded")
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		t.Errorf("Start after Close: %v", err)
	}
}

func TestIgnoreShutdown(t *testing.T) {
	h := fake.New(&fake.Options{IgnoreShutdown: true})
	vm := mustVM(t, h, "a", mib)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- h.Shutdown(ctx, vm.ID) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown of a guest that ignores it = %v, want context.Canceled", err)
	}
	got, _ := h.VM(t.Context(), vm.ID)
	if got.Power != hypervisor.PowerRunning {
		t.Errorf("after an ignored Shutdown the VM is %q", got.Power)
	}
	if err := h.PowerOff(t.Context(), vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.Shutdown(t.Context(), vm.ID); err != nil {
		t.Errorf("Shutdown of a stopped VM: %v", err)
	}
}

func TestCreateVM(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	mustVM(t, h, "taken", mib)
	spec := hypervisor.CreateSpec{
		Name: "new", CPUs: 4, MemoryB: 8 << 30, Firmware: "uefi",
		Placement: hypervisor.Placement{Cluster: "c1", Storage: "fast"},
		Disks:     []hypervisor.DiskInfo{{ID: "old-id", Name: "root", Size: 20 << 30, Bus: "scsi", BootOrder: 1}},
		NICs:      []hypervisor.NIC{{ID: "old-nic", MAC: "52:54:00:aa:bb:cc", Model: "e1000", Network: "vlan-7"}},
		Raw:       []byte(`{"x":1}`),
	}
	vm, err := h.CreateVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	want := hypervisor.VM{
		ID: "vm-2", Name: "new", CPUs: 4, MemoryB: 8 << 30, Firmware: "uefi", Power: hypervisor.PowerStopped,
		Placement: spec.Placement,
		Disks:     []hypervisor.DiskInfo{{ID: "disk-1", Name: "root", Size: 20 << 30, Bus: "scsi", BootOrder: 1}},
		NICs:      []hypervisor.NIC{{ID: "nic-1", MAC: "52:54:00:aa:bb:cc", Model: "e1000", Network: "vlan-7"}},
		Raw:       []byte(`{"x":1}`),
	}
	if diff := cmp.Diff(want, vm); diff != "" {
		t.Errorf("CreateVM (-want +got):\n%s", diff)
	}
	spec.Name = "taken"
	if _, err := h.CreateVM(ctx, spec); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("CreateVM with a name in use = %v, want ErrConflict", err)
	}
	spec.Name = ""
	if _, err := h.CreateVM(ctx, spec); err == nil {
		t.Error("CreateVM with an empty name succeeded")
	}
}

func TestFaults(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name  string
		fault fake.Fault
		want  []bool // per read of disk "disk-1" of vm "vm-1": fails?
	}{
		{"once", fake.Fault{Op: fake.OpRead}, []bool{true, false, false}},
		{"after two, twice", fake.Fault{Op: fake.OpRead, After: 2, Times: 2, Err: errBoom}, []bool{false, false, true, true, false}},
		{"forever", fake.Fault{Op: fake.OpRead, After: 1, Times: -1}, []bool{false, true, true, true}},
		{"other vm", fake.Fault{Op: fake.OpRead, VMID: "vm-2"}, []bool{false, false}},
		{"other disk", fake.Fault{Op: fake.OpRead, DiskID: "disk-2"}, []bool{false, false}},
		{"other op", fake.Fault{Op: fake.OpWrite}, []bool{false, false}},
		{"delay only", fake.Fault{Op: fake.OpRead, Delay: time.Microsecond}, []bool{false, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := fake.New(nil)
			vm := mustVM(t, h, "a", mib, mib)
			d, err := mustSnapshot(t, h, vm.ID).OpenDisk(t.Context(), "disk-1")
			if err != nil {
				t.Fatal(err)
			}
			h.Inject(tc.fault)
			var got []bool
			for range tc.want {
				_, err := d.ReadAt(make([]byte, 10), 0)
				got = append(got, err != nil)
				if err != nil && !errors.Is(err, fake.ErrInjected) && !errors.Is(err, errBoom) {
					t.Errorf("ReadAt error %v wraps neither ErrInjected nor the fault's Err", err)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("failures per call (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFaultDelayHonoursContext(t *testing.T) {
	h := fake.New(nil)
	vm := mustVM(t, h, "a", mib)
	h.Inject(fake.Fault{Op: fake.OpSnapshot, Delay: time.Hour, Err: errors.New("never reached")})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		_, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("delayed Snapshot with a cancelled context = %v, want context.Canceled", err)
	}
	if n := h.OpenSnapshots(); n != 0 {
		t.Errorf("%d snapshots open after a cancelled Snapshot", n)
	}
}

func TestFaultRelease(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	vm := mustVM(t, h, "a", mib)
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h.Inject(fake.Fault{Op: fake.OpRelease})
	h.Inject(fake.Fault{Op: fake.OpCreate, Times: -1})
	if err := s.Release(ctx); !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("Release = %v, want the injected fault", err)
	}
	if n := h.OpenSnapshots(); n != 1 {
		t.Errorf("after a failed Release %d snapshots are open, want 1", n)
	}
	want := []fake.Fault{{Op: fake.OpCreate, Times: -1}}
	if diff := cmp.Diff(want, h.PendingFaults()); diff != "" {
		t.Errorf("PendingFaults (-want +got):\n%s", diff)
	}
	if err := s.Release(ctx); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if n := h.OpenSnapshots(); n != 0 {
		t.Errorf("after Release %d snapshots are open", n)
	}
	h.ClearFaults()
	if got := h.PendingFaults(); len(got) != 0 {
		t.Errorf("PendingFaults after ClearFaults = %v", got)
	}
}

func TestFileVM(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	path := filepath.Join(dir, "root.raw")
	if err := makeSparse(path, 8*mib); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte{0xee}, 100), 3*mib)
	f.Close()

	h := fake.New(nil)
	defer h.Close()
	vm, err := h.AddFileVM("f", path)
	if err != nil {
		t.Fatal(err)
	}
	want := []hypervisor.DiskInfo{{ID: "disk-1", Name: "root.raw", Size: 8 * mib, Bus: "virtio", BootOrder: 1}}
	if diff := cmp.Diff(want, vm.Disks); diff != "" {
		t.Errorf("AddFileVM disks (-want +got):\n%s", diff)
	}
	s := mustSnapshot(t, h, vm.ID)
	d, err := s.OpenDisk(ctx, "disk-1")
	if err != nil {
		t.Fatal(err)
	}
	ext, err := d.(hypervisor.ExtentReporter).AllocatedExtents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The file system allocates in blocks; the written range must be
	// inside, and most of the sparse file must be outside.
	var total int64
	covered := false
	for _, e := range ext {
		total += e.Length
		covered = covered || (e.Offset <= 3*mib && e.End() >= 3*mib+100)
	}
	if !covered || total > mib {
		t.Errorf("AllocatedExtents of a sparse file with 100 bytes at 3 MiB = %v", ext)
	}

	// A guest write reaches the file; the snapshot keeps the old bytes.
	if err := h.WriteDisk(ctx, vm.ID, "disk-1", 3*mib, []byte("new")); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(onDisk[3*mib : 3*mib+4]); got != "new\xee" {
		t.Errorf("file after WriteDisk = %q", got)
	}
	buf := make([]byte, 4)
	if _, err := d.ReadAt(buf, 3*mib); err != nil || !bytes.Equal(buf, []byte{0xee, 0xee, 0xee, 0xee}) {
		t.Errorf("snapshot after WriteDisk = %x, %v; want the old bytes", buf, err)
	}

	if _, err := h.AddFileVM("missing", filepath.Join(dir, "nope.raw")); err == nil {
		t.Error("AddFileVM of a missing file succeeded")
	}
}

// TestConcurrentUse writes, snapshots, reads and releases from many
// goroutines at once (for -race), and checks that every snapshot reads the
// same twice while writes go on.
func TestConcurrentUse(t *testing.T) {
	for _, files := range []bool{false, true} {
		t.Run(fmt.Sprintf("files=%v", files), func(t *testing.T) {
			ctx := t.Context()
			x := makeHarness(fake.Options{Granularity: 4096}, files)
			hh, err := x(ctx, t)
			if err != nil {
				t.Fatal(err)
			}
			defer hh.Close()
			h := hh.Hypervisor().(*fake.Hypervisor)
			vm, err := hh.NewVM(ctx, "c", []int64{2 * mib, mib})
			if err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			var writers sync.WaitGroup
			for w := range 3 {
				writers.Go(func() {
					p := bytes.Repeat([]byte{byte(w + 1)}, 5000)
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						disk := vm.Disks[i%2]
						off := int64((i*7919 + w*104729) % int(disk.Size-5000))
						if err := h.WriteDisk(ctx, vm.ID, disk.ID, off, p); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			var readers sync.WaitGroup
			for range 3 {
				readers.Go(func() {
					for range 10 {
						s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
						if err != nil {
							t.Error(err)
							return
						}
						for _, di := range vm.Disks {
							d, err := s.OpenDisk(ctx, di.ID)
							if err != nil {
								t.Error(err)
								break
							}
							a, b := make([]byte, di.Size), make([]byte, di.Size)
							d.ReadAt(a, 0)
							d.ReadAt(b, 0)
							if !bytes.Equal(a, b) {
								t.Errorf("snapshot %s disk %s read differently twice", s.Info().ID, di.ID)
							}
							d.(hypervisor.ChangeTracker).ChangedExtents(ctx, d.(hypervisor.ChangeTracker).ChangeToken())
						}
						s.Release(ctx)
					}
				})
			}
			readers.Wait()
			close(stop)
			writers.Wait()
			if n := h.OpenSnapshots(); n != 0 {
				t.Errorf("%d snapshots open", n)
			}
		})
	}
}

func TestRemoveVM(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	a := mustVM(t, h, "a", mib)
	b := mustVM(t, h, "b", mib)
	h.WriteDisk(ctx, a.ID, "disk-1", 0, []byte("kept"))
	s := mustSnapshot(t, h, a.ID)
	if err := h.RemoveVM(a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := h.VM(ctx, a.ID); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("VM of a removed VM = %v, want ErrNotFound", err)
	}
	if _, err := h.Snapshot(ctx, a.ID, hypervisor.SnapshotOptions{}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Snapshot of a removed VM = %v, want ErrNotFound", err)
	}
	if err := h.RemoveVM(a.ID); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("second RemoveVM = %v, want ErrNotFound", err)
	}
	list, err := h.ListVMs(ctx)
	if err != nil || len(list) != 1 || list[0].ID != b.ID {
		t.Errorf("ListVMs after RemoveVM = %v, %v; want only %s", list, err, b.ID)
	}
	d, err := s.OpenDisk(ctx, "disk-1")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := d.ReadAt(buf, 0); err != nil || string(buf) != "kept" {
		t.Errorf("snapshot of a removed VM reads %q, %v", buf, err)
	}

	h.PowerOff(ctx, b.ID)
	w, err := h.OpenDiskForWrite(ctx, b.ID, "disk-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.RemoveVM(b.ID); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("RemoveVM with a disk open for writing = %v, want ErrConflict", err)
	}
	w.Close()
}

func TestSetChangeTracking(t *testing.T) {
	ctx := t.Context()
	h := fake.New(nil)
	vm := mustVM(t, h, "a", mib)
	before := mustTracker(t, mustSnapshot(t, h, vm.ID), "disk-1").ChangeToken()

	h.SetChangeTracking(vm.ID, false)
	off := mustTracker(t, mustSnapshot(t, h, vm.ID), "disk-1")
	if tok := off.ChangeToken(); tok != "" {
		t.Errorf("ChangeToken with tracking off = %q, want empty", tok)
	}
	if _, err := off.ChangedExtents(ctx, before); !errors.Is(err, hypervisor.ErrTokenInvalid) {
		t.Errorf("ChangedExtents with tracking off = %v, want ErrTokenInvalid", err)
	}

	h.SetChangeTracking(vm.ID, true)
	first := mustTracker(t, mustSnapshot(t, h, vm.ID), "disk-1").ChangeToken()
	if first == "" {
		t.Fatal("ChangeToken after turning tracking on is empty")
	}
	h.WriteDisk(ctx, vm.ID, "disk-1", 70000, []byte{1})
	next := mustTracker(t, mustSnapshot(t, h, vm.ID), "disk-1")
	if _, err := next.ChangedExtents(ctx, before); !errors.Is(err, hypervisor.ErrTokenInvalid) {
		t.Errorf("ChangedExtents(token from before tracking was off) = %v, want ErrTokenInvalid", err)
	}
	ext, err := next.ChangedExtents(ctx, first)
	want := []hypervisor.Extent{{Offset: 65536, Length: 65536}}
	if diff := cmp.Diff(want, ext); err != nil || diff != "" {
		t.Errorf("ChangedExtents after tracking was turned on: %v (-want +got):\n%s", err, diff)
	}
}

// FuzzChangedExtentsToken feeds arbitrary tokens to ChangedExtents: they
// must give ErrTokenInvalid (or, for the one valid token, succeed), never
// a panic or another error.
func FuzzChangedExtentsToken(f *testing.F) {
	h := fake.New(nil)
	vm, err := h.AddVM(hypervisor.VM{Disks: []hypervisor.DiskInfo{{Size: mib}}})
	if err != nil {
		f.Fatal(err)
	}
	s, err := h.Snapshot(context.Background(), vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		f.Fatal(err)
	}
	d, err := s.OpenDisk(context.Background(), "disk-1")
	if err != nil {
		f.Fatal(err)
	}
	ct := d.(hypervisor.ChangeTracker)
	valid := ct.ChangeToken()
	f.Add(valid)
	f.Add("")
	f.Add("fakecbt1.")
	f.Add("fakecbt1.e30")
	f.Add(valid[:len(valid)-1])
	f.Add(valid + "A")
	f.Fuzz(func(t *testing.T, token string) {
		_, err := ct.ChangedExtents(context.Background(), token)
		if token == valid {
			if err != nil {
				t.Fatalf("valid token: %v", err)
			}
			return
		}
		if !errors.Is(err, hypervisor.ErrTokenInvalid) {
			t.Fatalf("ChangedExtents(%q) = %v, want ErrTokenInvalid", token, err)
		}
	})
}

// TestWritableDiskExtents: a disk opened for writing reports where its
// current content may be non-zero, including its own writes, for in-memory
// and file-backed disks; NoExtents turns it off.
func TestWritableDiskExtents(t *testing.T) {
	ctx := t.Context()
	for _, files := range []bool{false, true} {
		t.Run(fmt.Sprintf("files=%v", files), func(t *testing.T) {
			h := fake.New(nil)
			defer h.Close()
			var vm hypervisor.VM
			if files {
				path := filepath.Join(t.TempDir(), "d.raw")
				if err := makeSparse(path, 8*mib); err != nil {
					t.Fatal(err)
				}
				var err error
				if vm, err = h.AddFileVM("f", path); err != nil {
					t.Fatal(err)
				}
			} else {
				vm = mustVM(t, h, "m", 8*mib)
			}
			if err := h.PowerOff(ctx, vm.ID); err != nil {
				t.Fatal(err)
			}
			w, err := h.OpenDiskForWrite(ctx, vm.ID, "disk-1")
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			er, ok := w.(hypervisor.ExtentReporter)
			if !ok {
				t.Fatalf("writable disk %T implements no ExtentReporter", w)
			}
			if _, ok := w.(hypervisor.ChangeReporter); !ok {
				t.Errorf("writable disk %T implements no ChangeReporter", w)
			}
			ext, err := er.AllocatedExtents(ctx)
			if err != nil || len(ext) != 0 {
				t.Fatalf("AllocatedExtents of an empty disk = %v, %v; want none", ext, err)
			}
			if _, err := w.WriteAt(bytes.Repeat([]byte{7}, 100), 5*mib+10); err != nil {
				t.Fatal(err)
			}
			if err := h.WriteDisk(ctx, vm.ID, "disk-1", mib, []byte{1}); err != nil {
				t.Fatal(err)
			}
			if ext, err = er.AllocatedExtents(ctx); err != nil {
				t.Fatal(err)
			}
			// The file system allocates in blocks of its own: both writes
			// must be covered, and little else.
			var total int64
			for _, at := range []int64{mib, 5*mib + 10, 5*mib + 109} {
				covered := false
				for _, e := range ext {
					covered = covered || (e.Offset <= at && at < e.End())
				}
				if !covered {
					t.Errorf("AllocatedExtents = %v; byte %d written but not covered", ext, at)
				}
			}
			for _, e := range ext {
				total += e.Length
			}
			if total > 2*mib {
				t.Errorf("AllocatedExtents = %v; %d bytes for two small writes", ext, total)
			}
			w.Close()
			if _, err := er.AllocatedExtents(ctx); err == nil {
				t.Error("AllocatedExtents after Close succeeded")
			}
		})
	}
	h := fake.New(&fake.Options{NoExtents: true})
	vm := mustVM(t, h, "n", mib)
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	w, err := h.OpenDiskForWrite(ctx, vm.ID, "disk-1")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, ok := w.(hypervisor.ExtentReporter); ok {
		t.Errorf("NoExtents: writable disk %T implements ExtentReporter", w)
	}
}
