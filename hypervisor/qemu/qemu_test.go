package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/hypervisortest"
)

// needQEMU skips t when the QEMU binaries are missing.
func needQEMU(t testing.TB) {
	t.Helper()
	for _, b := range []string{DefaultQEMU, DefaultStorageDaemon, DefaultQEMUImg} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not found: install qemu-system-x86 and qemu-utils (apt-get install -y qemu-system-x86 qemu-utils) to run the QEMU backend's tests", b)
		}
	}
}

// harness adapts the backend to the conformance suite: VMs are QEMU
// processes with qcow2 disks in a test directory.
type harness struct {
	h      *Hypervisor
	images string
}

var (
	_ hypervisortest.SnapshotCounter  = (*harness)(nil)
	_ hypervisortest.TrackingResetter = (*harness)(nil)
	_ hypervisortest.QuiesceReporter  = (*harness)(nil)
)

func newHarness(t testing.TB) (*harness, error) {
	dir := t.TempDir()
	h, err := New(Options{ImageDir: filepath.Join(dir)})
	if err != nil {
		return nil, err
	}
	return &harness{h: h, images: dir}, nil
}

func (x *harness) Hypervisor() hypervisor.Hypervisor { return x.h }

func (x *harness) NewVM(ctx context.Context, name string, sizes []int64) (hypervisor.VM, error) {
	spec := VMSpec{Name: name, CPUs: 1, MemoryB: 128 << 20, Labels: map[string]string{"suite": "hypervisortest"}}
	for i, s := range sizes {
		img := filepath.Join(x.images, fmt.Sprintf("%s-%d.qcow2", name, i))
		if err := x.h.qemuImg(ctx, "create", "-q", "-f", "qcow2", img, strconv.FormatInt(s, 10)); err != nil {
			return hypervisor.VM{}, err
		}
		spec.Disks = append(spec.Disks, DiskSpec{Image: img})
	}
	if _, err := x.h.Define(ctx, spec); err != nil {
		return hypervisor.VM{}, err
	}
	if err := x.h.Start(ctx, name); err != nil {
		return hypervisor.VM{}, err
	}
	return x.h.VM(ctx, name)
}

func (x *harness) GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	return x.h.GuestWrite(ctx, vmID, diskID, off, p)
}

func (x *harness) ChangeGranularity() int64 { return Granularity }

func (x *harness) OpenSnapshots(ctx context.Context) (int, error) { return x.h.OpenSnapshots(), nil }

// ResetChangeTracking kills QEMU and starts it again, as a host crash would.
func (x *harness) ResetChangeTracking(ctx context.Context, vmID string) error {
	if err := x.h.Kill(ctx, vmID); err != nil {
		return err
	}
	return x.h.Start(ctx, vmID)
}

func (x *harness) CanQuiesce() bool { return false }

func (x *harness) Close() error {
	n := x.h.OpenSnapshots()
	err := x.h.Close()
	if n != 0 {
		return fmt.Errorf("%d snapshots left open", n)
	}
	return err
}

func TestConformance(t *testing.T) {
	needQEMU(t)
	hypervisortest.Run(t, func(ctx context.Context, t *testing.T) (hypervisortest.Harness, error) {
		return newHarness(t)
	})
}
