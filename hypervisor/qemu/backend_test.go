package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/qmp"
)

const mib = 1 << 20

// setup returns a backend and a running VM with one disk of size bytes.
func setup(t *testing.T, opts Options, size int64) (*Hypervisor, hypervisor.VM) {
	t.Helper()
	needQEMU(t)
	dir := t.TempDir()
	if opts.ImageDir == "" {
		opts.ImageDir = dir
	}
	h, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	x := &harness{h: h, images: dir}
	vm, err := x.NewVM(t.Context(), "vm1", []int64{size})
	if err != nil {
		t.Fatal(err)
	}
	return h, vm
}

// token takes a snapshot and returns its token for disk 0 and the snapshot.
func token(t *testing.T, h *Hypervisor, vm hypervisor.VM) (string, hypervisor.Snapshot, hypervisor.ChangeTracker) {
	t.Helper()
	s, err := h.Snapshot(t.Context(), vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Release(context.Background()) })
	d, err := s.OpenDisk(t.Context(), vm.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ct := d.(hypervisor.ChangeTracker)
	return ct.ChangeToken(), s, ct
}

func guestWrite(t *testing.T, h *Hypervisor, vm hypervisor.VM, off int64, p []byte) {
	t.Helper()
	if err := h.GuestWrite(t.Context(), vm.ID, vm.Disks[0].ID, off, p); err != nil {
		t.Fatal(err)
	}
}

func changed(t *testing.T, ct hypervisor.ChangeTracker, tok string) ([]hypervisor.Extent, error) {
	t.Helper()
	return ct.ChangedExtents(t.Context(), tok)
}

// A QEMU killed after its bitmaps were saved once loads them as
// inconsistent: every earlier token is refused, and tracking starts again.
func TestKilledQEMUInvalidatesTokens(t *testing.T) {
	h, vm := setup(t, Options{}, 2*mib)
	ctx := t.Context()
	t1, s1, _ := token(t, h, vm)
	s1.Release(ctx)
	// A clean stop saves the bitmaps; Start loads them.
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, h, vm, 0, []byte("a"))
	t2, s2, ct2 := token(t, h, vm)
	got, err := changed(t, ct2, t1)
	if err != nil {
		t.Fatalf("token across a clean restart: %v", err)
	}
	if diff := cmp.Diff([]hypervisor.Extent{{Offset: 0, Length: Granularity}}, got); diff != "" {
		t.Errorf("changes across a clean restart (-want +got):\n%s", diff)
	}
	s2.Release(ctx)
	if err := h.Kill(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	// QEMU loaded the saved bitmap (t1's) as inconsistent; t2's, created
	// after the restart, was never saved.
	v, _ := h.lookup(vm.ID)
	bms, err := v.run.bitmaps(ctx, v.spec.Disks[0].Node)
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]bool{}
	for _, b := range bms {
		state[b.Name] = b.Inconsistent
	}
	if inc, ok := state[t1]; !ok || !inc {
		t.Errorf("after the kill: bitmap %s present %v, inconsistent %v; want present and inconsistent (bitmaps: %+v)", t1, ok, inc, bms)
	}
	if _, ok := state[t2]; ok {
		t.Errorf("after the kill: bitmap %s created after the restart survived", t2)
	}
	guestWrite(t, h, vm, mib, []byte("b"))
	t3, _, ct3 := token(t, h, vm)
	for _, tok := range []string{t1, t2} {
		if _, err := changed(t, ct3, tok); !errors.Is(err, hypervisor.ErrTokenInvalid) {
			t.Errorf("ChangedExtents(token from before the kill) = %v, want ErrTokenInvalid", err)
		}
	}
	guestWrite(t, h, vm, 2*mib-1, []byte("c"))
	_, _, ct4 := token(t, h, vm)
	got, err = changed(t, ct4, t3)
	if err != nil {
		t.Fatalf("token of the new chain: %v", err)
	}
	if diff := cmp.Diff([]hypervisor.Extent{{Offset: 2*mib - Granularity, Length: Granularity}}, got); diff != "" {
		t.Errorf("changes on the new chain (-want +got):\n%s", diff)
	}
}

// Tokens older than KeepBitmaps snapshots are pruned and refused; newer
// ones cover every write since.
func TestPruning(t *testing.T) {
	h, vm := setup(t, Options{KeepBitmaps: 3}, 1*mib)
	ctx := t.Context()
	var toks []string
	for i := range 5 {
		tok, s, _ := token(t, h, vm)
		toks = append(toks, tok)
		s.Release(ctx)
		guestWrite(t, h, vm, int64(i)*Granularity, []byte{byte(i + 1)})
	}
	_, _, last := token(t, h, vm)
	for i, tok := range toks {
		got, err := changed(t, last, tok)
		if i < 3 {
			if !errors.Is(err, hypervisor.ErrTokenInvalid) {
				t.Errorf("token %d of 5 with KeepBitmaps 3: %v, want ErrTokenInvalid", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		want := []hypervisor.Extent{{Offset: int64(i) * Granularity, Length: int64(5-i) * Granularity}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("token %d (-want +got):\n%s", i, diff)
		}
	}
}

// A token survives the backend: a new Hypervisor on the same images (a new
// process of the embedder) honours it after a clean stop.
func TestTokenAcrossBackends(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	ctx := t.Context()
	h1, err := New(Options{ImageDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	x := &harness{h: h1, images: dir}
	vm, err := x.NewVM(ctx, "vm1", []int64{1 * mib})
	if err != nil {
		t.Fatal(err)
	}
	tok, s, _ := token(t, h1, vm)
	s.Release(ctx)
	raw := specOf(t, vm)
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}

	h2, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if _, err := h2.Define(ctx, raw); err != nil {
		t.Fatal(err)
	}
	if err := h2.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	guestWrite(t, h2, vm, 300*1024, []byte("x"))
	_, _, ct := token(t, h2, vm)
	got, err := changed(t, ct, tok)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]hypervisor.Extent{{Offset: 256 * 1024, Length: Granularity}}, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// specOf recovers a VM's spec from its Raw description.
func specOf(t *testing.T, vm hypervisor.VM) VMSpec {
	t.Helper()
	var s VMSpec
	if err := json.Unmarshal(vm.Raw, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Release leaves nothing behind in QEMU or on disk, also with a cancelled
// context and after a failed Snapshot.
func TestReleaseCleansUp(t *testing.T) {
	h, vm := setup(t, Options{}, 1*mib)
	ctx := t.Context()
	v, _ := h.lookup(vm.ID)
	nodesBefore := nodeNames(t, v.run.qmp)
	for _, rctx := range []context.Context{ctx, canceled(ctx)} {
		s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d, err := s.OpenDisk(ctx, vm.Disks[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.(hypervisor.ChangeTracker).ChangedExtents(ctx, d.(hypervisor.ChangeTracker).ChangeToken()); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(rctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if _, err := d.ReadAt(make([]byte, 10), 0); err == nil {
			t.Errorf("ReadAt after Release succeeded")
		}
	}
	if s, err := h.Snapshot(canceled(ctx), vm.ID, hypervisor.SnapshotOptions{}); err == nil {
		s.Release(ctx)
		t.Errorf("Snapshot with a cancelled context succeeded")
	}
	if diff := cmp.Diff(nodesBefore, nodeNames(t, v.run.qmp)); diff != "" {
		t.Errorf("block nodes after releases (-before +after):\n%s", diff)
	}
	var jobs []any
	if err := v.run.qmp.Execute(ctx, "query-block-jobs", nil, &jobs); err != nil || len(jobs) != 0 {
		t.Errorf("block jobs left: %v %v", jobs, err)
	}
	var exports []struct {
		ID string `json:"id"`
	}
	if err := v.run.qmp.Execute(ctx, "query-block-exports", nil, &exports); err != nil {
		t.Fatal(err)
	}
	for _, e := range exports {
		if !strings.HasPrefix(e.ID, "vmbguest") {
			t.Errorf("export %q left", e.ID)
		}
	}
	files, _ := filepath.Glob(filepath.Join(h.opts.RunDir, "*.qcow2"))
	if len(files) != 0 {
		t.Errorf("fleecing files left: %v", files)
	}
	// Only the chain's bitmap is left on the disk node.
	bms, err := v.run.bitmaps(ctx, v.spec.Disks[0].Node)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range bms {
		names = append(names, b.Name)
	}
	if len(names) != 3 { // one per snapshot; the cancelled one may or may not have added its own
		for _, n := range names {
			if parseBitmap(n).seq == 0 {
				t.Errorf("temporary bitmap %q left", n)
			}
		}
	}
}

func canceled(ctx context.Context) context.Context {
	c, cancel := context.WithCancel(ctx)
	cancel()
	return c
}

func nodeNames(t *testing.T, c *qmp.Client) []string {
	t.Helper()
	var nodes []struct {
		NodeName string `json:"node-name"`
	}
	if err := c.Execute(t.Context(), "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range nodes {
		if !strings.HasPrefix(n.NodeName, "#") {
			out = append(out, n.NodeName)
		}
	}
	return out
}

// Restore in place and rebuild, checked byte for byte with qemu-img compare.
func TestRestoreMatchesWithQemuImgCompare(t *testing.T) {
	h, vm := setup(t, Options{}, 4*mib)
	ctx := t.Context()
	want := make([]byte, 4*mib)
	for i, w := range []struct{ off, n int64 }{{0, 4096}, {mib - 7, 70000}, {4*mib - 100, 100}} {
		p := bytes.Repeat([]byte{byte(i + 1), byte(i * 3)}, int(w.n/2+1))[:w.n]
		guestWrite(t, h, vm, w.off, p)
		copy(want[w.off:], p)
	}
	// Back up: read the snapshot into a raw file.
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDisk(ctx, vm.Disks[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, d.Size())
	if n, err := d.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	s.Release(ctx)
	if !bytes.Equal(got, want) {
		t.Fatal("snapshot content differs from what the guest wrote")
	}
	backup := filepath.Join(t.TempDir(), "backup.raw")
	if err := os.WriteFile(backup, got, 0o644); err != nil {
		t.Fatal(err)
	}
	// The guest scribbles; restore in place with the VM off.
	guestWrite(t, h, vm, 0, bytes.Repeat([]byte{0xff}, 2*mib))
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	restore := func(vmID, diskID string) {
		w, err := h.OpenDiskForWrite(ctx, vmID, diskID)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
	}
	restore(vm.ID, vm.Disks[0].ID)
	v, _ := h.lookup(vm.ID)
	compare(t, v.spec.Disks[0].Image, backup)

	// Rebuild: a new VM from the old one's description.
	nv, err := h.CreateVM(ctx, hypervisor.CreateSpec{Name: "rebuilt", CPUs: 1, MemoryB: 64 * mib, Disks: vm.Disks, Raw: vm.Raw})
	if err != nil {
		t.Fatal(err)
	}
	restore(nv.ID, nv.Disks[0].ID)
	if err := h.Start(ctx, nv.ID); err != nil {
		t.Fatal(err)
	}
	nvm, _ := h.lookup(nv.ID)
	compare(t, nvm.spec.Disks[0].Image, backup)
}

func compare(t *testing.T, image, raw string) {
	t.Helper()
	out, err := exec.Command(DefaultQEMUImg, "compare", "-U", "-f", "qcow2", "-F", "raw", image, raw).CombinedOutput()
	if err != nil {
		t.Errorf("qemu-img compare %s %s: %v\n%s", image, raw, err, out)
	}
}

// A QEMU started by someone else is attached by its QMP socket; the
// backend snapshots it and leaves it running on Close.
func TestAttach(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	ctx := t.Context()
	img := filepath.Join(dir, "a.qcow2")
	if out, err := exec.Command(DefaultQEMUImg, "create", "-q", "-f", "qcow2", img, "1M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sockDir, err := os.MkdirTemp("", "vmbqt")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "qmp.sock")
	cmd := exec.Command(DefaultQEMU, "-machine", "none", "-nodefaults", "-display", "none",
		"-chardev", "socket,id=m,path="+sock+",server=on,wait=off", "-mon", "chardev=m,mode=control",
		"-blockdev", `{"driver":"qcow2","node-name":"sys","file":{"driver":"file","filename":"`+img+`"}}`,
		"-blockdev", `{"driver":"raw","node-name":"sysg","file":"sys"}`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	for i := 0; ; i++ {
		if c, err := qmp.Dial(ctx, sock); err == nil {
			c.Close()
			break
		}
		if i > 500 {
			t.Fatal("QEMU made no QMP socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Define(ctx, VMSpec{Name: "ext", QMPSocket: sock, Disks: []DiskSpec{{ID: "sys", Image: img, Node: "sys"}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Define(ctx, VMSpec{Name: "bad", QMPSocket: sock, Disks: []DiskSpec{{ID: "sys", Image: img}}}); err == nil {
		t.Errorf("Define of an attached VM without node names succeeded")
	}

	vm, err := h.VM(ctx, "ext")
	if err != nil || vm.Power != hypervisor.PowerRunning {
		t.Fatalf("VM = %+v, %v; want running", vm, err)
	}
	s, err := h.Snapshot(ctx, "ext", hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDisk(ctx, "sys")
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != mib || d.(hypervisor.ChangeTracker).ChangeToken() == "" {
		t.Errorf("attached disk: size %d, token %q", d.Size(), d.(hypervisor.ChangeTracker).ChangeToken())
	}
	s.Release(ctx)
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("the attached QEMU is gone after Close: %v", err)
	}
	c.Close()

	// Restore in place of an attached VM: power off (QEMU quits), write
	// through a storage daemon, read back through a snapshot of the
	// stopped VM. Start is the owner's business.
	h2, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if _, err := h2.Define(ctx, VMSpec{Name: "bad", QMPSocket: sock, Disks: []DiskSpec{{ID: "sys", Image: img, Node: "nope"}}}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Define of an attached VM with an unknown node: %v, want an error naming it", err)
	}
	if _, err := h2.Define(ctx, VMSpec{Name: "ext", QMPSocket: sock, Disks: []DiskSpec{{ID: "sys", Image: img, Node: "sys"}}}); err != nil {
		t.Fatal(err)
	}
	if err := h2.PowerOff(ctx, "ext"); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("the attached QEMU after PowerOff: %v", err)
	}
	if err := h2.Start(ctx, "ext"); !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Errorf("Start of an attached VM that stopped: %v, want ErrUnsupported", err)
	}
	w, err := h2.OpenDiskForWrite(ctx, "ext", "sys")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("restored"), 4096); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = h2.Snapshot(ctx, "ext", hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(ctx)
	d, err = s.OpenDisk(ctx, "sys")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := d.ReadAt(got, 4096); err != nil || string(got) != "restored" {
		t.Errorf("read back %q, %v; want %q", got, err, "restored")
	}
}

// Application consistency freezes the guest through the agent around the
// transaction; without an agent it is refused or falls back with a note.
func TestApplicationConsistency(t *testing.T) {
	h, vm := setup(t, Options{}, 1*mib)
	ctx := t.Context()
	_, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent})
	if !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Errorf("application-consistent snapshot without an agent: %v, want ErrUnsupported", err)
	}
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent, AllowCrashFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	if in := s.Info(); in.Consistency != hypervisor.CrashConsistent || !strings.Contains(in.Note, "agent") {
		t.Errorf("fallback: %q, note %q", in.Consistency, in.Note)
	}
	s.Release(ctx)

	agent := startFakeAgent(t)
	v, _ := h.lookup(vm.ID)
	v.spec.AgentSocket = agent.sock
	s, err = h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(ctx)
	if in := s.Info(); in.Consistency != hypervisor.ApplicationConsistent || in.Note != "" {
		t.Errorf("with an agent: %q, note %q", in.Consistency, in.Note)
	}
	if diff := cmp.Diff([]string{"guest-sync", "guest-fsfreeze-freeze", "guest-fsfreeze-thaw"}, agent.commands()); diff != "" {
		t.Errorf("agent commands (-want +got):\n%s", diff)
	}
}

// A VM with a real machine type gets a virtio-blk device on each guest
// node; snapshots and change tracking work with the device attached. The
// CPUs stay paused (-S): no guest needs to run.
func TestMachineQ35(t *testing.T) {
	needQEMU(t)
	dir := t.TempDir()
	ctx := t.Context()
	h, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	img := filepath.Join(dir, "a.qcow2")
	if err := h.qemuImg(ctx, "create", "-q", "-f", "qcow2", img, "1M"); err != nil {
		t.Fatal(err)
	}
	vm, err := h.Define(ctx, VMSpec{Name: "q35", Machine: "q35", CPUs: 1, MemoryB: 64 * mib, ExtraArgs: []string{"-S"},
		Disks: []DiskSpec{{Image: img, BootOrder: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	v, _ := h.lookup(vm.ID)
	var devs []struct {
		QDev string `json:"qdev"`
	}
	if err := v.run.qmp.Execute(ctx, "query-block", nil, &devs); err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || !strings.Contains(devs[0].QDev, "vmbd0dev") {
		t.Errorf("query-block: %+v, want the disk's virtio-blk device", devs)
	}
	tok, s, _ := token(t, h, vm)
	guestWrite(t, h, vm, 70000, []byte("q35"))
	s.Release(ctx)
	_, _, ct := token(t, h, vm)
	got, err := changed(t, ct, tok)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]hypervisor.Extent{{Offset: Granularity, Length: Granularity}}, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
}

// While a snapshot of a stopped VM holds its images, Start is refused with
// ErrConflict; after Release it works.
func TestStartWhileStoppedSnapshotHeld(t *testing.T) {
	h, vm := setup(t, Options{}, 1*mib)
	ctx := t.Context()
	if err := h.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("Start while a snapshot of the stopped VM is held: %v, want ErrConflict", err)
	}
	if err := s.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		t.Fatalf("Start after Release: %v", err)
	}
	if got, _ := h.VM(ctx, vm.ID); got.Power != hypervisor.PowerRunning {
		t.Errorf("power %q after Start", got.Power)
	}
}
