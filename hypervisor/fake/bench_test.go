package fake_test

import (
	"path/filepath"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
)

// BenchmarkReadAt reads a snapshot's disk in 1 MiB pieces from parallel
// goroutines, the way the backup engine does: for a file-backed disk (a
// sparse 1 GiB image, so the page cache and not a device is measured, with
// a little data written through the fake) and for an in-memory disk.
func BenchmarkReadAt(b *testing.B) {
	const size = 1 << 30
	for _, files := range []bool{true, false} {
		name := "memory"
		if files {
			name = "file"
		}
		b.Run(name, func(b *testing.B) {
			ctx := b.Context()
			h := fake.New(nil)
			defer h.Close()
			var vm hypervisor.VM
			var err error
			if files {
				p := filepath.Join(b.TempDir(), "disk.raw")
				if err := makeSparse(p, size); err != nil {
					b.Fatal(err)
				}
				vm, err = h.AddFileVM("bench", p)
			} else {
				vm, err = h.AddVM(hypervisor.VM{Disks: []hypervisor.DiskInfo{{Size: size}}})
			}
			if err != nil {
				b.Fatal(err)
			}
			block := make([]byte, 1<<20)
			for i := range block {
				block[i] = byte(i)
			}
			for off := int64(0); off < size; off += 16 << 20 {
				h.WriteDisk(ctx, vm.ID, vm.Disks[0].ID, off, block)
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
			b.SetBytes(1 << 20)
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 1<<20)
				var off int64
				for pb.Next() {
					if _, err := d.ReadAt(buf, off); err != nil {
						b.Error(err)
						return
					}
					off = (off + 1<<20) % size
				}
			})
		})
	}
}
