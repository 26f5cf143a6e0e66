package ave_test

import (
	"context"
	"io"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
)

// BenchmarkSnapshotRead measures a whole snapshot disk read through the
// default data path (export, HTTP download into the staging file, ReadAt by
// four readers in 1 MiB chunks, mostly in order, as the engine reads).
func BenchmarkSnapshotRead(b *testing.B) {
	const size = 32 << 20
	const chunk = 1 << 20
	srv, hv := newBackend(b, avetest.Options{}, nil)
	info, err := srv.AddVM(avetest.VMSpec{Name: "bench", Disks: []avetest.DiskSpec{{Size: size}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.GuestWrite(info.ID, info.DiskIDs[0], 0, pattern(size, 9)); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(size)
	for b.Loop() {
		s, err := hv.Snapshot(ctx, info.ID, hypervisor.SnapshotOptions{})
		if err != nil {
			b.Fatal(err)
		}
		d, err := s.OpenDisk(ctx, info.DiskIDs[0])
		if err != nil {
			b.Fatal(err)
		}
		next := make(chan int64, size/chunk)
		for off := int64(0); off < size; off += chunk {
			next <- off
		}
		close(next)
		done := make(chan error, 4)
		for range 4 {
			go func() {
				buf := make([]byte, chunk)
				for off := range next {
					if _, err := d.ReadAt(buf, off); err != nil && err != io.EOF {
						done <- err
						return
					}
				}
				done <- nil
			}()
		}
		for range 4 {
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		}
		d.Close()
		s.Release(ctx)
	}
}
