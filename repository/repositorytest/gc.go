package repositorytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gocloud.dev/blob"

	"github.com/vmbackup/vmbackup/repository"
)

func testGC(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	const cs = 64 << 10
	b := mk(t)
	r := initRepo(t, b, cs, nil)
	shared := makeDisk(random, 2*cs, 1)
	onlyA := makeDisk(random, 3*cs, 2)
	diskA := append(append([]byte{}, shared...), onlyA...)
	diskB := append(append([]byte{}, shared...), makeDisk(compressible, cs, 3)...)
	ma := commitPoint(t, r, "a", nil, map[string][]byte{"d": diskA})
	mb := commitPoint(t, r, "b", nil, map[string][]byte{"d": diskB})
	chunksBefore := listKeys(t, b, "chunks/")
	if len(chunksBefore) != 6 {
		t.Fatalf("%d chunks stored, want 6", len(chunksBefore))
	}

	// Nothing to collect: every chunk is referenced.
	rep, err := r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&repository.GCReport{ChunksKept: 6}, rep); diff != "" {
		t.Errorf("GC with nothing to collect (-want +got):\n%s", diff)
	}

	if err := r.DeletePoint(ctx, ma.ID); err != nil {
		t.Fatal(err)
	}
	// Within the grace period nothing goes.
	rep, err = r.GC(ctx, &repository.GCOptions{Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksRemoved != 0 || rep.PagesRemoved != 0 {
		t.Errorf("GC within grace removed %+v", rep)
	}
	// A dry run reports what would go and removes nothing.
	waitClockTick(t, b)
	dry, err := r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.ChunksRemoved != 3 || dry.PagesRemoved != 2 || dry.BytesFreed < 3*cs || dry.ChunksKept != 3 {
		t.Errorf("dry run = %+v, want 3 chunks and 2 index objects (page, root) of at least %d bytes, 3 kept", dry, 3*cs)
	}
	if diff := cmp.Diff(chunksBefore, listKeys(t, b, "chunks/")); diff != "" {
		t.Errorf("dry run changed the bucket:\n%s", diff)
	}
	rep, err = r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(dry, rep); diff != "" {
		t.Errorf("GC differs from its dry run (-dry +real):\n%s", diff)
	}
	if n := len(listKeys(t, b, "chunks/")); n != 3 {
		t.Errorf("%d chunks left, want 3", n)
	}
	got, err := readDisk(ctx, r, mb, "d")
	if err != nil || !bytes.Equal(got, diskB) {
		t.Errorf("point b after GC: %v", err)
	}
	if vr, err := r.Verify(ctx, &repository.VerifyOptions{Full: true}); err != nil || len(vr.Problems) != 0 {
		t.Errorf("Verify after GC: %v %v", err, vr)
	}
	// Leases and the lock are gone.
	if keys := listKeys(t, b, "leases/"); len(keys) != 0 {
		t.Errorf("leases left behind: %v", keys)
	}
	if keys := listKeys(t, b, "gc/lock"); len(keys) != 0 {
		t.Errorf("GC lock left behind: %v", keys)
	}

	// An in-flight writer's chunks survive a GC, even with no grace.
	w, err := r.NewPointWriter(ctx, mb)
	if err != nil {
		t.Fatal(err)
	}
	p := makeDisk(random, cs, 77)
	if _, err := w.PutChunk(ctx, r.HashChunk(p), p); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond}); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Exists(ctx, repository.ChunkKey(r.HashChunk(p))); err != nil || !ok {
		t.Errorf("GC removed a chunk of an in-flight writer (exists=%v, %v)", ok, err)
	}
	// After Abort it is garbage.
	if err := w.Abort(ctx); err != nil {
		t.Fatal(err)
	}
	waitClockTick(t, b)
	rep, err = r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.ChunksRemoved != 1 {
		t.Errorf("GC after Abort removed %d chunks, want 1", rep.ChunksRemoved)
	}
}

// waitClockTick waits, on stores whose ModTimes have a resolution of one
// second (S3 Last-Modified headers), for the next second: GC keeps what it
// cannot tell apart from its own start, so a write and a GC meant to remove
// it must fall in different seconds.
func waitClockTick(t *testing.T, b *blob.Bucket) {
	t.Helper()
	ctx := context.Background()
	if err := b.WriteAll(ctx, "probe", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	a, err := b.Attributes(ctx, "probe")
	if err != nil {
		t.Fatal(err)
	}
	b.Delete(ctx, "probe")
	if a.ModTime.Nanosecond() == 0 {
		time.Sleep(1100 * time.Millisecond)
	}
}

// testGCConcurrentWriters runs writers that share chunks (with each other
// and with deleted points) while GC runs again and again with no grace; at
// the end every committed point must read back exactly.
func testGCConcurrentWriters(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	const cs = 64 << 10
	b := mk(t)
	clock := NewClock(time.Date(2026, 11, 25, 4, 0, 0, 0, time.UTC))
	r := initRepo(t, b, cs, clock.Now)
	// A pool of chunk contents that points draw from, so writers dedup
	// against each other, against bases and against garbage.
	pool := make([][]byte, 24)
	for i := range pool {
		pool[i] = makeDisk(random, cs, uint64(100+i))
	}
	type committed struct {
		m    *repository.Manifest
		data []byte
	}
	var (
		mu     sync.Mutex
		points []committed
	)
	const writers, rounds = 6, 4
	var wg sync.WaitGroup
	errs := make(chan error, writers*rounds+100)
	for wi := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var base *repository.Manifest
			for round := range rounds {
				disk := make([]byte, 0, 5*cs)
				for s := range 5 {
					disk = append(disk, pool[(wi*7+round*3+s*5)%len(pool)]...)
				}
				m, err := commitConcurrent(ctx, r, fmt.Sprint("vm", wi), base, disk)
				if errors.Is(err, repository.ErrNotFound) {
					// A concurrent GC removed a probed chunk: the documented
					// outcome is a failed Commit, retried.
					base = nil
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				clock.Advance(time.Minute)
				mu.Lock()
				points = append(points, committed{m, disk})
				// Forget an older point now and then, like retention.
				if len(points) > 3 && round%2 == 1 {
					old := points[0]
					points = points[1:]
					mu.Unlock()
					if err := r.DeletePoint(ctx, old.m.ID); err != nil {
						errs <- err
					}
				} else {
					mu.Unlock()
				}
				base = m
			}
		}()
	}
	stop := make(chan struct{})
	gcDone := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				gcDone <- n
				return
			default:
			}
			_, err := r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond})
			if err != nil && !errors.Is(err, repository.ErrLocked) {
				errs <- fmt.Errorf("gc: %w", err)
			}
			n++
		}
	}()
	wg.Wait()
	close(stop)
	gcs := <-gcDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if gcs < 2 {
		t.Logf("only %d GC runs overlapped the writers", gcs)
	}
	if _, err := r.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond}); err != nil {
		t.Fatal(err)
	}
	if len(points) == 0 {
		t.Fatal("no point committed")
	}
	for _, p := range points {
		got, err := readDisk(ctx, r, p.m, "d")
		if err != nil {
			t.Errorf("point %s after concurrent GC: %v", p.m.ID, err)
			continue
		}
		if !bytes.Equal(got, p.data) {
			t.Errorf("point %s reads back different data", p.m.ID)
		}
	}
	vr, err := r.Verify(ctx, &repository.VerifyOptions{Full: true})
	if err != nil || len(vr.Problems) != 0 {
		t.Errorf("Verify: %v %v", err, vr.Problems)
	}
}

// commitConcurrent is commitPoint without testing.T, for goroutines.
func commitConcurrent(ctx context.Context, r *repository.Repository, vm string, base *repository.Manifest, data []byte) (*repository.Manifest, error) {
	w, err := r.NewPointWriter(ctx, base)
	if err != nil {
		return nil, err
	}
	defer w.Abort(ctx)
	cs := r.Config().ChunkSize
	x := repository.NewIndex(int64(len(data)), cs)
	for i := 0; i < x.Len(); i++ {
		p := data[i*cs : min((i+1)*cs, len(data))]
		id := r.HashChunk(p)
		if _, err := w.PutChunk(ctx, id, p); err != nil {
			return nil, err
		}
		x.Set(i, id)
	}
	m := &repository.Manifest{VMID: vm, Kind: "full", Disks: []repository.DiskRecord{{ID: "d", Size: int64(len(data))}}}
	if err := w.Commit(ctx, m, map[string]*repository.Index{"d": x}); err != nil {
		return nil, err
	}
	return m, nil
}

func testStats(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	const cs = 64 << 10
	r := initRepo(t, mk(t), cs, nil)
	rnd := makeDisk(random, 2*cs, 1)
	txt := makeDisk(compressible, 2*cs, 2)
	// d: random, text, a zero chunk, a short last chunk of text.
	d := append(append(append(append([]byte{}, rnd...), txt...), make([]byte, cs)...), txt[:100]...)
	m1 := commitPoint(t, r, "a", nil, map[string][]byte{"d": d})
	m2 := commitPoint(t, r, "b", nil, map[string][]byte{"d": d}) // a full duplicate

	ps, err := r.PointStats(ctx, m1)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Points != 1 || ps.Disks != 1 || ps.LogicalBytes != int64(len(d)) || ps.AllocatedBytes != int64(4*cs+100) || ps.Chunks != 5 || ps.UniqueBytes != int64(4*cs+100) {
		t.Errorf("PointStats = %+v", ps)
	}
	if ps.StoredBytes <= 0 || ps.StoredBytes >= ps.UniqueBytes || ps.MetadataBytes <= 0 {
		t.Errorf("PointStats stored %d of %d unique bytes, metadata %d: want compression of the text", ps.StoredBytes, ps.UniqueBytes, ps.MetadataBytes)
	}
	if ps.DedupRatio() != 1 || ps.CompressionRatio() <= 1 {
		t.Errorf("PointStats ratios: dedup %.2f (want 1), compression %.2f (want > 1)", ps.DedupRatio(), ps.CompressionRatio())
	}
	all, err := r.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all.Points != 2 || all.LogicalBytes != 2*int64(len(d)) || all.UniqueBytes != ps.UniqueBytes || all.StoredBytes != ps.StoredBytes {
		t.Errorf("Stats = %+v, want two points sharing every chunk", all)
	}
	if all.DedupRatio() != 2 {
		t.Errorf("Stats dedup ratio %.2f, want 2", all.DedupRatio())
	}
	both, err := r.PointStats(ctx, m1, m2)
	if err != nil {
		t.Fatal(err)
	}
	if both.Points != 2 || both.Chunks != ps.Chunks || both.StoredBytes != ps.StoredBytes || both.LogicalBytes != 2*ps.LogicalBytes {
		t.Errorf("PointStats of both = %+v, want their shared chunks counted once", both)
	}
}

func testCancel(t *testing.T, mk MakeBucket) {
	const cs = 64 << 10
	r := initRepo(t, mk(t), cs, nil)
	m := commitPoint(t, r, "a", nil, map[string][]byte{"d": makeDisk(random, 2*cs, 1)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := makeDisk(random, cs, 5)
	checks := map[string]func() error{
		"ListPoints": func() error { _, err := r.ListPoints(ctx, repository.Filter{}); return err },
		"Point":      func() error { _, err := r.Point(ctx, m.ID); return err },
		"OpenDisk":   func() error { _, err := r.OpenDisk(ctx, m, "d"); return err },
		"NewPointWriter": func() error {
			_, err := r.NewPointWriter(ctx, m)
			return err
		},
		"GC":     func() error { _, err := r.GC(ctx, nil); return err },
		"Verify": func() error { _, err := r.Verify(ctx, &repository.VerifyOptions{Full: true}); return err },
		"Stats":  func() error { _, err := r.Stats(ctx); return err },
		"PutChunk": func() error {
			w, err := r.NewPointWriter(context.Background(), nil)
			if err != nil {
				return err
			}
			defer w.Abort(context.Background())
			_, err = w.PutChunk(ctx, r.HashChunk(p), p)
			return err
		},
	}
	for name, f := range checks {
		if err := f(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v, want context.Canceled", name, err)
		}
	}
}
