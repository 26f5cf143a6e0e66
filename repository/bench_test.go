package repository_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/repository"
)

// benchChunk returns a 1 MiB chunk: half text-like, half random, so both
// the compressor and the incompressible path do work.
func benchChunk() []byte {
	p := make([]byte, repository.DefaultChunkSize)
	rng := rand.New(rand.NewPCG(1, 2))
	words := []string{"block ", "sector ", "inode ", "extent\n"}
	for i := 0; i < len(p)/2; {
		i += copy(p[i:len(p)/2], words[rng.IntN(len(words))])
	}
	for i := len(p) / 2; i < len(p); i++ {
		p[i] = byte(rng.Uint32())
	}
	return p
}

func benchRepo(b *testing.B, bucket func(b *testing.B) *blob.Bucket) *repository.Repository {
	r, err := repository.InitBucket(context.Background(), bucket(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.Close() })
	return r
}

func memBucket(b *testing.B) *blob.Bucket {
	bk := memblob.OpenBucket(nil)
	b.Cleanup(func() { bk.Close() })
	return bk
}

func fileBucket(b *testing.B) *blob.Bucket {
	bk, err := blob.OpenBucket(context.Background(), "file://"+b.TempDir()+"?metadata=skip&no_tmp_dir=1")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bk.Close() })
	return bk
}

// BenchmarkPutChunk stores new 1 MiB chunks (hash, dedup check, compress,
// upload) from parallel goroutines; MB/s is plaintext.
func BenchmarkPutChunk(b *testing.B) {
	for _, bc := range []struct {
		name   string
		bucket func(*testing.B) *blob.Bucket
	}{{"mem", memBucket}, {"file", fileBucket}} {
		b.Run(bc.name, func(b *testing.B) {
			r := benchRepo(b, bc.bucket)
			ctx := context.Background()
			w, err := r.NewPointWriter(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer w.Abort(ctx)
			src := benchChunk()
			var seq uint64
			var mu = make(chan struct{}, 1)
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				p := append([]byte(nil), src...)
				for pb.Next() {
					mu <- struct{}{}
					seq++
					n := seq
					<-mu
					binary.LittleEndian.PutUint64(p, n) // a new chunk each time
					if _, err := w.PutChunk(ctx, r.HashChunk(p), p); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkPutChunkKnown is the incremental hot path: the chunk is known
// from the base point, so PutChunk only looks it up.
func BenchmarkPutChunkKnown(b *testing.B) {
	r := benchRepo(b, memBucket)
	ctx := context.Background()
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Abort(ctx)
	p := benchChunk()
	id := r.HashChunk(p)
	if _, err := w.PutChunk(ctx, id, p); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if res, err := w.PutChunk(ctx, id, p); err != nil || res.New {
			b.Fatal(res, err)
		}
	}
}

// BenchmarkReadChunk reads 1 MiB chunks back through a DiskReader (fetch,
// decompress, re-hash); MB/s is plaintext.
func BenchmarkReadChunk(b *testing.B) {
	for _, bc := range []struct {
		name   string
		bucket func(*testing.B) *blob.Bucket
	}{{"mem", memBucket}, {"file", fileBucket}} {
		b.Run(bc.name, func(b *testing.B) {
			r := benchRepo(b, bc.bucket)
			ctx := context.Background()
			w, err := r.NewPointWriter(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			const slots = 16
			cs := r.Config().ChunkSize
			x := repository.NewIndex(int64(slots*cs), cs)
			p := benchChunk()
			for i := range slots {
				binary.LittleEndian.PutUint64(p, uint64(i))
				id := r.HashChunk(p)
				if _, err := w.PutChunk(ctx, id, p); err != nil {
					b.Fatal(err)
				}
				x.Set(i, id)
			}
			m := &repository.Manifest{VMID: "vm", Disks: []repository.DiskRecord{{ID: "d", Size: int64(slots * cs)}}}
			if err := w.Commit(ctx, m, map[string]*repository.Index{"d": x}); err != nil {
				b.Fatal(err)
			}
			d, err := r.OpenDisk(ctx, m, "d")
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(cs))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 0, cs)
				i := 0
				for pb.Next() {
					var err error
					if buf, err = d.ReadChunk(ctx, i%slots, buf[:0]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkListPoints lists the points of one VM in a file:// repository
// that holds 500 points of 50 VMs, as every backup does to find its VM's
// newest point.
func BenchmarkListPoints(b *testing.B) {
	ctx := context.Background()
	r := benchRepo(b, fileBucket)
	for i := range 500 {
		w, err := r.NewPointWriter(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		m := &repository.Manifest{VMID: fmt.Sprintf("vm-%02d", i%50), Kind: "full", Consistency: "crash",
			Disks: []repository.DiskRecord{{ID: "d", Size: 1 << 30}}}
		if err := w.Commit(ctx, m, map[string]*repository.Index{"d": repository.NewIndex(1<<30, repository.DefaultChunkSize)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		ms, err := r.ListPoints(ctx, repository.Filter{VMID: "vm-00"})
		if err != nil || len(ms) != 10 {
			b.Fatalf("ListPoints: %d points, %v; want 10", len(ms), err)
		}
	}
}
