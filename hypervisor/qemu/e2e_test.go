package qemu_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	_ "gocloud.dev/blob/fileblob"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/qemu"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

const (
	mib   = 1 << 20
	chunk = 64 << 10
)

// initRepo makes a file repository with 64 KiB chunks (the bitmaps'
// granularity, so an incremental reads exactly the dirty blocks).
func initRepo(t *testing.T) *repository.Repository {
	t.Helper()
	u := (&url.URL{Scheme: "file", Path: filepath.ToSlash(t.TempDir())}).String()
	repo, err := repository.Init(context.Background(), u, &repository.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatalf("init repository: %v", err)
	}
	t.Cleanup(func() { repo.Close() })
	return repo
}

// e2e is a QEMU backend, one VM and the shadow copy of its disks.
type e2e struct {
	t      *testing.T
	hv     *qemu.Hypervisor
	svc    *backup.Service
	vm     hypervisor.VM
	shadow [][]byte
	rng    *rand.Rand
	dir    string
}

func (e *e2e) write(disk int, off int64, n int) {
	e.t.Helper()
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(e.rng.UintN(255) + 1)
	}
	if err := e.hv.GuestWrite(e.t.Context(), e.vm.ID, e.vm.Disks[disk].ID, off, p); err != nil {
		e.t.Fatal(err)
	}
	copy(e.shadow[disk][off:], p)
}

// backup runs one backup and checks its kind and, if wantRead >= 0, that
// it read exactly wantRead bytes from the hypervisor.
func (e *e2e) backup(kind string, wantRead int64) backup.VMResult {
	e.t.Helper()
	job, err := e.svc.Backup(e.t.Context(), backup.Request{VMIDs: []string{e.vm.ID}})
	if err != nil {
		e.t.Fatalf("backup: %v", err)
	}
	r := job.VMs[0]
	if r.Kind != kind {
		e.t.Fatalf("backup kind %q (reason %q), want %q", r.Kind, r.Reason, kind)
	}
	if wantRead >= 0 && r.BytesRead != wantRead {
		e.t.Errorf("%s backup read %d bytes, want %d", kind, r.BytesRead, wantRead)
	}
	e.t.Logf("%s backup: read %d of %d bytes (%s)", kind, r.BytesRead, r.BytesTotal, r.Reason)
	return r
}

// expect saves the shadow as raw files and returns their paths.
func (e *e2e) expect(name string) []string {
	e.t.Helper()
	var paths []string
	for i, d := range e.shadow {
		p := filepath.Join(e.dir, fmt.Sprintf("%s-%d.raw", name, i))
		if err := os.WriteFile(p, d, 0o644); err != nil {
			e.t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// compare checks vm's images against raw files with qemu-img compare.
func compare(t *testing.T, vm hypervisor.VM, raws []string) {
	t.Helper()
	var spec qemu.VMSpec
	if err := json.Unmarshal(vm.Raw, &spec); err != nil {
		t.Fatal(err)
	}
	for i, d := range spec.Disks {
		out, err := exec.Command(qemu.DefaultQEMUImg, "compare", "-U", "-f", "qcow2", "-F", "raw", d.Image, raws[i]).CombinedOutput()
		if err != nil {
			t.Errorf("qemu-img compare %s %s: %v\n%s", d.Image, raws[i], err, out)
		}
	}
}

// TestBackupServiceEndToEnd runs backup.Service against a real QEMU: a
// full backup, incrementals that read only the dirty chunks, a killed QEMU
// that forces a full backup, a restore in place and a rebuild, each
// checked with qemu-img compare.
func TestBackupServiceEndToEnd(t *testing.T) {
	for _, b := range []string{qemu.DefaultQEMU, qemu.DefaultStorageDaemon, qemu.DefaultQEMUImg} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not found: install qemu-system-x86 and qemu-utils (apt-get install -y qemu-system-x86 qemu-utils)", b)
		}
	}
	repo := initRepo(t)
	ctx := t.Context()
	dir := t.TempDir()
	hv, err := qemu.New(qemu.Options{ImageDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer hv.Close()
	spec := qemu.VMSpec{Name: "web", CPUs: 1, MemoryB: 64 * mib}
	sizes := []int64{4 * mib, 2 * mib}
	for i, s := range sizes {
		img := filepath.Join(dir, fmt.Sprintf("web-%d.qcow2", i))
		if out, err := exec.Command(qemu.DefaultQEMUImg, "create", "-q", "-f", "qcow2", img, strconv.FormatInt(s, 10)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		spec.Disks = append(spec.Disks, qemu.DiskSpec{Image: img})
	}
	vm, err := hv.Define(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := hv.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	svc, err := backup.New(backup.Config{Hypervisor: hv, Repository: repo, Logger: slog.New(slog.DiscardHandler), RetryDelay: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e := &e2e{t: t, hv: hv, svc: svc, vm: vm, rng: rand.New(rand.NewPCG(1, 2)), dir: t.TempDir()}
	for _, s := range sizes {
		e.shadow = append(e.shadow, make([]byte, s))
	}
	e.write(0, 0, 300*1024)
	e.write(0, 3*mib+5, 70000)
	e.write(1, mib-10, 20)

	// A full backup reads only what is allocated: 5 + 2 chunks of disk 0
	// (300 KiB at 0, 70000 bytes across a chunk boundary at 3 MiB), 2
	// of disk 1 (20 bytes across 1 MiB).
	e.backup(backup.PointFull, 9*chunk)
	e.write(0, 100, 10)    // chunk 0
	e.write(1, 2*mib-1, 1) // the last chunk of disk 1
	e.backup(backup.PointIncremental, 2*chunk)
	e.write(0, 2*mib+chunk-1, 2) // across two chunks
	r2 := e.backup(backup.PointIncremental, 2*chunk)
	point2 := e.expect("point2")

	// A killed QEMU loses the bitmaps: the next backup is full, and says why.
	e.write(0, mib, 1000)
	if err := hv.Kill(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := hv.Start(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	e.write(1, 0, 5)
	rk := e.backup(backup.PointFull, -1)
	if rk.Reason == "" {
		t.Errorf("full backup after a kill records no reason")
	}
	afterKill := e.expect("afterkill")
	e.write(0, 0, 10)
	e.backup(backup.PointIncremental, chunk)

	// Restore point 2 in place (the VM is powered off for it).
	e.write(0, 0, 4*mib)
	job, err := svc.RestoreInPlace(ctx, r2.PointID, restore.InPlaceOptions{PowerOff: true})
	if err != nil {
		t.Fatalf("restore in place: %v", err)
	}
	t.Logf("restore in place: wrote %d bytes", job.VMs[0].BytesWritten)
	compare(t, vm, point2)

	// Rebuild point 2 as a new VM.
	job, err = svc.Rebuild(ctx, r2.PointID, restore.RebuildOptions{})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	nvm, err := hv.VM(ctx, job.VMs[0].VMID)
	if err != nil {
		t.Fatal(err)
	}
	if nvm.ID == vm.ID {
		t.Fatalf("rebuild wrote the original VM")
	}
	compare(t, nvm, point2)

	// The full backup taken after the kill is complete too.
	job, err = svc.Rebuild(ctx, rk.PointID, restore.RebuildOptions{Name: "afterkill"})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	kvm, err := hv.VM(ctx, job.VMs[0].VMID)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, kvm, afterKill)
}
