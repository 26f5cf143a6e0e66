package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// BenchmarkSnapshotRead reads a snapshot of a running VM's fully allocated
// qcow2 disk (256 MiB, or VMBACKUP_QEMU_BENCH_MIB) through the backend —
// QEMU's NBD server, the fleecing node, the qcow2 image — with 8
// goroutines issuing 4 MiB reads on one Disk, as the engine does.
func BenchmarkSnapshotRead(b *testing.B) {
	needQEMU(b)
	size := int64(256 << 20)
	if s := os.Getenv("VMBACKUP_QEMU_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		size = int64(n) << 20
	}
	dir := b.TempDir()
	img := filepath.Join(dir, "d.qcow2")
	if out, err := exec.Command(DefaultQEMUImg, "create", "-q", "-f", "qcow2", img, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	if out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 "+strconv.FormatInt(size, 10), img).CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	ctx := context.Background()
	h, err := New(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	vm, err := h.Define(ctx, VMSpec{Name: "bench", Disks: []DiskSpec{{Image: img}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := h.Start(ctx, vm.ID); err != nil {
		b.Fatal(err)
	}
	s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Release(ctx)
	d, err := s.OpenDisk(ctx, vm.Disks[0].ID)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	const workers, req = 8, 4 << 20
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				p := make([]byte, req)
				for {
					off := next.Add(req) - req
					if off >= size {
						return
					}
					if _, err := d.ReadAt(p, off); err != nil {
						b.Error(err)
						return
					}
					if p[0] != 0x5a || p[req-1] != 0x5a {
						b.Errorf("wrong data at %d", off)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}
