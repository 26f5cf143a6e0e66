package nbd

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkReadAt reads a non-sparse raw image (1 GiB, or
// VMBACKUP_NBD_BENCH_MIB MiB) through a local qemu-nbd export with 8
// goroutines issuing 4 MiB reads on one connection; b.SetBytes makes the
// figure MB/s.
func BenchmarkReadAt(b *testing.B) {
	needQEMU(b, "qemu-nbd")
	size := int64(1 << 30)
	if s := os.Getenv("VMBACKUP_NBD_BENCH_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		size = int64(n) << 20
	}
	path := filepath.Join(b.TempDir(), "disk.raw")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 4<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	f.Close()
	c := dial(b, serve(b, path, "raw", "--read-only", "--cache=writeback"), Options{})
	const workers, req = 8, 4 << 20
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := make([]byte, req)
				for {
					off := next.Add(req) - req
					if off >= size {
						return
					}
					if _, err := c.ReadAt(p, off); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
}
