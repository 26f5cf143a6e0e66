package fake_test

import (
	"path/filepath"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
)

// BenchmarkReadAt reads a 4 GiB snapshot disk in 1 MiB pieces from parallel
// goroutines, the way the backup engine does. The file-backed disk is a
// sparse image with 64 KiB of data every 16 MiB, so the page cache and the
// fake are measured, not a device. In "file-cow" the guest overwrites those
// blocks after the snapshot, so reads mix preserved blocks and the file.
//
//	go test -run XXX -bench ReadAt ./hypervisor/fake/
func BenchmarkReadAt(b *testing.B) {
	const (
		size  = 4 << 30
		every = 16 << 20
	)
	for _, tc := range []struct {
		name      string
		files     bool
		cowWrites bool
	}{
		{"file", true, false},
		{"file-cow", true, true},
		{"memory", false, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := b.Context()
			h := fake.New(nil)
			defer h.Close()
			var vm hypervisor.VM
			var err error
			if tc.files {
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
			data := make([]byte, 64<<10)
			for i := range data {
				data[i] = byte(i) | 1
			}
			disk := vm.Disks[0].ID
			for off := int64(0); off < size; off += every {
				h.WriteDisk(ctx, vm.ID, disk, off, data)
			}
			s, err := h.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Release(ctx)
			if tc.cowWrites {
				for off := int64(0); off < size; off += every {
					h.WriteDisk(ctx, vm.ID, disk, off+100, data[:1000])
				}
			}
			d, err := s.OpenDisk(ctx, disk)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(1 << 20)
			b.ResetTimer()
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
