// Package repositorytest is a conformance suite for repositories on any
// gocloud.dev bucket, in the style of gocloud's drivertest: a storage
// backend (or a new bucket driver) passes if Run passes against it.
//
//	func TestRepository(t *testing.T) {
//		repositorytest.Run(t, func(t *testing.T) *blob.Bucket {
//			b, err := blob.OpenBucket(ctx, "mem://")
//			...
//			return b // empty, closed by the caller's t.Cleanup
//		})
//	}
//
// Every test gets a fresh, empty bucket from the factory and asserts
// behaviour, not implementation: bytes read back equal bytes written, every
// damaged object is reported by reads and by Verify with what is broken,
// garbage collection keeps everything a committed point references.
package repositorytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gocloud.dev/blob"

	"github.com/vmbackup/vmbackup/repository"
)

// MakeBucket returns an empty bucket for one test. It registers its own
// cleanup with t.
type MakeBucket func(t *testing.T) *blob.Bucket

// Run runs every conformance test against buckets made by mk.
func Run(t *testing.T, mk MakeBucket) {
	tests := []struct {
		name string
		fn   func(t *testing.T, mk MakeBucket)
	}{
		{"InitOpen", testInitOpen},
		{"RoundTrip", testRoundTrip},
		{"Incremental", testIncremental},
		{"Points", testPoints},
		{"Corruption", testCorruption},
		{"Missing", testMissing},
		{"GC", testGC},
		{"GCConcurrentWriters", testGCConcurrentWriters},
		{"Stats", testStats},
		{"Cancel", testCancel},
		{"SetCodec", testSetCodec},
		{"Recompress", testRecompress},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, mk) })
	}
}

// Clock is a fake clock safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock standing at t.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func initRepo(t *testing.T, b *blob.Bucket, chunkSize int, now func() time.Time) *repository.Repository {
	t.Helper()
	r, err := repository.InitBucket(context.Background(), b, &repository.InitOptions{
		Options:   repository.Options{Now: now, Concurrency: 4},
		ChunkSize: chunkSize,
	})
	if err != nil {
		t.Fatalf("InitBucket: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// Disk kinds of test data.
const (
	holes        = "holes"        // zero chunks and zero runs between data
	compressible = "compressible" // text-like
	random       = "random"       // incompressible
)

// makeDisk returns size bytes of the given kind, deterministically.
func makeDisk(kind string, size int64, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 42))
	p := make([]byte, size)
	switch kind {
	case random:
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
	case compressible:
		words := []string{"virtual ", "machine ", "backup ", "chunk ", "index ", "page\n", "zero "}
		for i := 0; i < len(p); {
			i += copy(p[i:], words[rng.IntN(len(words))])
		}
	case holes:
		// Data in runs of a few KiB, long zero stretches between.
		for off := int64(0); off < size; off += int64(40000 + rng.IntN(200000)) {
			n := min(int64(1000+rng.IntN(9000)), size-off)
			for i := off; i < off+n; i++ {
				p[i] = byte(rng.Uint32() | 1)
			}
		}
	}
	return p
}

func isZero(p []byte) bool {
	for _, c := range p {
		if c != 0 {
			return false
		}
	}
	return true
}

// slotIDs returns the id of every slot of x.
func slotIDs(x *repository.Index) []repository.ChunkID {
	ids := make([]repository.ChunkID, x.Len())
	for i := range ids {
		ids[i] = x.Get(i)
	}
	return ids
}

// backup stores data as a disk through w and returns its index and stats.
func backup(t *testing.T, r *repository.Repository, w *repository.PointWriter, base *repository.Index, data []byte) (*repository.Index, repository.DiskStats) {
	t.Helper()
	cs := r.Config().ChunkSize
	var x *repository.Index
	if base != nil {
		x = base.Clone()
	} else {
		x = repository.NewIndex(int64(len(data)), cs)
	}
	var st repository.DiskStats
	for i := 0; i < x.Len(); i++ {
		p := data[i*cs : min((i+1)*cs, len(data))]
		st.BytesRead += int64(len(p))
		if isZero(p) {
			x.Set(i, repository.ZeroChunk)
			continue
		}
		id := r.HashChunk(p)
		res, err := w.PutChunk(context.Background(), id, p)
		if err != nil {
			t.Fatalf("PutChunk(slot %d): %v", i, err)
		}
		if res.New {
			st.BytesNew += int64(len(p))
			st.BytesStored += res.Stored
		}
		x.Set(i, id)
	}
	return x, st
}

// commitPoint backs up disks (disk id -> data) as one point of vm.
func commitPoint(t *testing.T, r *repository.Repository, vm string, base *repository.Manifest, disks map[string][]byte) *repository.Manifest {
	t.Helper()
	ctx := context.Background()
	w, err := r.NewPointWriter(ctx, base)
	if err != nil {
		t.Fatalf("NewPointWriter: %v", err)
	}
	m := &repository.Manifest{VMID: vm, VMName: "vm " + vm, Kind: "full", Consistency: "crash"}
	idx := map[string]*repository.Index{}
	ids := make([]string, 0, len(disks))
	for id := range disks {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		x, st := backup(t, r, w, nil, disks[id])
		idx[id] = x
		m.Disks = append(m.Disks, repository.DiskRecord{ID: id, Name: "disk " + id, Size: int64(len(disks[id])), Stats: st})
	}
	if err := w.Commit(ctx, m, idx); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return m
}

// readDisk reads a whole disk of a point through ReadAt in uneven pieces.
func readDisk(ctx context.Context, r *repository.Repository, m *repository.Manifest, disk string) ([]byte, error) {
	d, err := r.OpenDisk(ctx, m, disk)
	if err != nil {
		return nil, err
	}
	out := make([]byte, d.Size())
	step := 100_000 // not a divisor of any chunk size: reads cross chunk boundaries
	for off := 0; off < len(out); off += step {
		end := min(off+step, len(out))
		n, err := d.ReadAt(out[off:end], int64(off))
		if err != nil {
			return nil, err
		}
		if n != end-off {
			return nil, fmt.Errorf("ReadAt(%d): %d bytes, want %d", off, n, end-off)
		}
	}
	return out, nil
}

func testInitOpen(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	b := mk(t)
	if _, err := repository.OpenBucket(ctx, b, nil); !errors.Is(err, repository.ErrNoRepository) {
		t.Fatalf("OpenBucket(empty bucket) = %v, want ErrNoRepository", err)
	}
	for _, cs := range []int{1000, 32 << 10, 3 << 20, 32 << 20} {
		if _, err := repository.InitBucket(ctx, b, &repository.InitOptions{ChunkSize: cs}); err == nil || !strings.Contains(err.Error(), "chunk_size") {
			t.Errorf("InitBucket(ChunkSize %d) = %v, want an error naming chunk_size", cs, err)
		}
	}
	if _, err := repository.InitBucket(ctx, b, &repository.InitOptions{Codec: "lzma"}); err == nil || !strings.Contains(err.Error(), "lzma") {
		t.Errorf("InitBucket(Codec lzma) = %v, want an error naming the codec", err)
	}
	r, err := repository.InitBucket(ctx, b, nil)
	if err != nil {
		t.Fatalf("InitBucket: %v", err)
	}
	cfg := r.Config()
	if cfg.ChunkSize != repository.DefaultChunkSize || cfg.Version != repository.FormatVersion || cfg.ID == "" || cfg.Codec == "" {
		t.Errorf("Config() = %+v, want defaults", cfg)
	}
	if _, err := repository.InitBucket(ctx, b, nil); !errors.Is(err, repository.ErrExists) {
		t.Errorf("second InitBucket = %v, want ErrExists", err)
	}
	r2, err := repository.OpenBucket(ctx, b, nil)
	if err != nil {
		t.Fatalf("OpenBucket: %v", err)
	}
	if diff := cmp.Diff(cfg, r2.Config()); diff != "" {
		t.Errorf("opened config differs (-init +open):\n%s", diff)
	}
	if r2.Bucket() != b {
		t.Errorf("Bucket() is not the bucket opened")
	}

	// Damaged or newer configs.
	good, err := b.ReadAll(ctx, "config")
	if err != nil {
		t.Fatalf("read config: %v", err)
	}
	for _, tc := range []struct {
		name string
		data string
		want error
	}{
		{"garbage", "{not json", repository.ErrCorrupt},
		{"truncated", string(good[:len(good)/2]), repository.ErrCorrupt},
		{"newer", strings.Replace(string(good), `"version": 1`, `"version": 99`, 1), repository.ErrVersion},
		{"bad chunk size", strings.Replace(string(good), fmt.Sprintf(`"chunk_size": %d`, cfg.ChunkSize), `"chunk_size": 1000`, 1), repository.ErrCorrupt},
		{"unknown codec", strings.Replace(string(good), `"codec": "`+cfg.Codec+`"`, `"codec": "rot13"`, 1), repository.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.data == string(good) {
				t.Fatalf("test case did not change the config")
			}
			if err := b.WriteAll(ctx, "config", []byte(tc.data), nil); err != nil {
				t.Fatal(err)
			}
			if _, err := repository.OpenBucket(ctx, b, nil); !errors.Is(err, tc.want) {
				t.Errorf("OpenBucket = %v, want %v", err, tc.want)
			}
		})
	}
}

func testRoundTrip(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	for _, cs := range []int{64 << 10, 256 << 10, 1 << 20} {
		t.Run(fmt.Sprint(cs>>10, "KiB"), func(t *testing.T) {
			r := initRepo(t, mk(t), cs, nil)
			disks := map[string][]byte{
				holes:        makeDisk(holes, int64(3*cs+12345), 1),
				compressible: makeDisk(compressible, int64(2*cs), 2),
				random:       makeDisk(random, int64(cs+cs/2+7), 3),
				"empty":      {},
				"allzero":    make([]byte, 2*cs+1),
				"tiny":       []byte("x"),
			}
			m := commitPoint(t, r, "vm1", nil, disks)
			got, err := r.Point(ctx, m.ID)
			if err != nil {
				t.Fatalf("Point(%s): %v", m.ID, err)
			}
			if diff := cmp.Diff(m, got); diff != "" {
				t.Errorf("Point differs from committed manifest (-want +got):\n%s", diff)
			}
			for id, want := range disks {
				data, err := readDisk(ctx, r, got, id)
				if err != nil {
					t.Fatalf("disk %s: %v", id, err)
				}
				if !bytes.Equal(data, want) {
					t.Errorf("disk %s: read back differs from what was written", id)
				}
				d, err := r.OpenDisk(ctx, got, id)
				if err != nil {
					t.Fatal(err)
				}
				var buf []byte
				for i := 0; i < d.Index().Len(); i++ {
					buf, err = d.ReadChunk(ctx, i, buf[:0])
					if err != nil {
						t.Fatalf("ReadChunk(%d): %v", i, err)
					}
					if !bytes.Equal(buf, want[i*cs:min((i+1)*cs, len(want))]) {
						t.Errorf("disk %s ReadChunk(%d) differs", id, i)
					}
				}
				// Reads past the end.
				if n, err := d.ReadAt(make([]byte, 10), d.Size()); n != 0 || err == nil {
					t.Errorf("ReadAt(end) = %d, %v; want 0, io.EOF", n, err)
				}
				if len(want) >= 3 {
					p := make([]byte, 10)
					n, err := d.ReadAt(p, d.Size()-3)
					if n != 3 || err == nil || !bytes.Equal(p[:3], want[len(want)-3:]) {
						t.Errorf("ReadAt(size-3) = %d, %v; want 3 bytes and io.EOF", n, err)
					}
				}
			}
		})
	}
}

func testIncremental(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	cs := 64 << 10
	b := mk(t)
	r := initRepo(t, b, cs, nil)
	// A sparse disk of 2.5 index pages: data in its first 8 slots, zeros
	// elsewhere (never materialized: the index is built by hand).
	slots := 2*repository.PageSlots + repository.PageSlots/2
	size := int64(slots) * int64(cs)
	head := makeDisk(random, int64(8*cs), 9)
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	x1, _ := backup(t, r, w, nil, head)
	full := repository.NewIndex(size, cs)
	for i := 0; i < x1.Len(); i++ {
		full.Set(i, x1.Get(i))
	}
	m1 := &repository.Manifest{VMID: "vm", Kind: "full", Disks: []repository.DiskRecord{{ID: "d", Size: size}}}
	if err := w.Commit(ctx, m1, map[string]*repository.Index{"d": full}); err != nil {
		t.Fatal(err)
	}
	objectsBefore := listKeys(t, b, "")

	// Change one chunk near the end (third page).
	w, err = r.NewPointWriter(ctx, m1)
	if err != nil {
		t.Fatal(err)
	}
	x2, err := r.ReadIndex(ctx, m1.Disks[0].Index)
	if err != nil {
		t.Fatalf("ReadIndex: %v", err)
	}
	if x2.Size() != full.Size() || x2.ChunkSize() != full.ChunkSize() {
		t.Fatalf("ReadIndex covers %d bytes in %d-byte chunks, want %d in %d", x2.Size(), x2.ChunkSize(), full.Size(), full.ChunkSize())
	}
	if diff := cmp.Diff(slotIDs(full), slotIDs(x2)); diff != "" {
		t.Fatalf("ReadIndex differs from the committed index:\n%s", diff)
	}
	changedSlot := slots - 3
	p := makeDisk(compressible, int64(cs), 10)
	res, err := w.PutChunk(ctx, r.HashChunk(p), p)
	if err != nil || !res.New || res.Stored == 0 {
		t.Fatalf("PutChunk(changed) = %+v, %v; want a new chunk", res, err)
	}
	x2.Set(changedSlot, r.HashChunk(p))
	// An unchanged chunk is known from the base: not new, nothing stored.
	p0 := head[:cs]
	if res, err := w.PutChunk(ctx, r.HashChunk(p0), p0); err != nil || res.New || res.Stored != 0 {
		t.Errorf("PutChunk(unchanged) = %+v, %v; want not new", res, err)
	}
	m2 := &repository.Manifest{VMID: "vm", Kind: "incremental", Disks: []repository.DiskRecord{{ID: "d", Size: size}}}
	if err := w.Commit(ctx, m2, map[string]*repository.Index{"d": x2}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	added := diffKeys(objectsBefore, listKeys(t, b, ""))
	// New: one chunk, one page, one root, one manifest.
	var kinds []string
	for _, k := range added {
		kinds = append(kinds, k[:strings.IndexByte(k, '/')])
	}
	slices.Sort(kinds)
	if diff := cmp.Diff([]string{"chunks", "index", "pages", "points"}, kinds); diff != "" {
		t.Errorf("objects written by a one-chunk incremental (-want +got):\n%s\nkeys: %v", diff, added)
	}
	for _, tc := range []struct {
		m    *repository.Manifest
		slot int
		want []byte
	}{
		{m1, 0, head[:cs]}, {m1, 7, head[7*cs:]}, {m1, changedSlot, make([]byte, cs)}, {m1, slots - 1, make([]byte, cs)},
		{m2, 0, head[:cs]}, {m2, 7, head[7*cs:]}, {m2, changedSlot, p}, {m2, 5000, make([]byte, cs)},
	} {
		d, err := r.OpenDisk(ctx, tc.m, "d")
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, cs)
		if _, err := d.ReadAt(got, int64(tc.slot)*int64(cs)); err != nil {
			t.Fatalf("point %s slot %d: %v", tc.m.Kind, tc.slot, err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("point %s slot %d reads back differently", tc.m.Kind, tc.slot)
		}
	}
}

func listKeys(t *testing.T, b *blob.Bucket, prefix string) []string {
	t.Helper()
	var keys []string
	it := b.List(&blob.ListOptions{Prefix: prefix})
	for {
		o, err := it.Next(context.Background())
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("list: %v", err)
		}
		keys = append(keys, o.Key)
	}
	slices.Sort(keys)
	return keys
}

func diffKeys(before, after []string) []string {
	var out []string
	for _, k := range after {
		if _, found := slices.BinarySearch(before, k); !found {
			out = append(out, k)
		}
	}
	return out
}

func testPoints(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	clock := NewClock(time.Date(2026, 11, 25, 4, 58, 0, 0, time.UTC))
	r := initRepo(t, mk(t), 64<<10, clock.Now)
	data := map[string][]byte{"d": makeDisk(random, 70000, 5)}
	var ms []*repository.Manifest
	for i, vm := range []string{"a", "b", "a", "a", "b"} {
		w, err := r.NewPointWriter(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		x, _ := backup(t, r, w, nil, data["d"])
		m := &repository.Manifest{VMID: vm, PlanID: fmt.Sprint("plan", i%2), Disks: []repository.DiskRecord{{ID: "d", Size: 70000}}}
		if err := w.Commit(ctx, m, map[string]*repository.Index{"d": x}); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		clock.Advance(time.Minute)
	}
	ids := func(ms []*repository.Manifest) []string {
		var s []string
		for _, m := range ms {
			s = append(s, m.ID)
		}
		return s
	}
	for _, tc := range []struct {
		f    repository.Filter
		want []int
	}{
		{repository.Filter{}, []int{4, 3, 2, 1, 0}},
		{repository.Filter{VMID: "a"}, []int{3, 2, 0}},
		{repository.Filter{PlanID: "plan1"}, []int{3, 1}},
		{repository.Filter{VMID: "b", PlanID: "plan0"}, []int{4}},
		{repository.Filter{VMID: "c"}, nil},
	} {
		got, err := r.ListPoints(ctx, tc.f)
		if err != nil {
			t.Fatalf("ListPoints(%+v): %v", tc.f, err)
		}
		var want []*repository.Manifest
		for _, i := range tc.want {
			want = append(want, ms[i])
		}
		if diff := cmp.Diff(ids(want), ids(got)); diff != "" {
			t.Errorf("ListPoints(%+v) (-want +got):\n%s", tc.f, diff)
		}
	}
	if !strings.HasPrefix(ms[0].ID, "20261125T045800Z-") {
		t.Errorf("point id %q does not start with its creation time", ms[0].ID)
	}
	if err := r.DeletePoint(ctx, ms[2].ID); err != nil {
		t.Fatalf("DeletePoint: %v", err)
	}
	if _, err := r.Point(ctx, ms[2].ID); !errors.Is(err, repository.ErrNotFound) {
		t.Errorf("Point(deleted) = %v, want ErrNotFound", err)
	}
	if err := r.DeletePoint(ctx, ms[2].ID); !errors.Is(err, repository.ErrNotFound) {
		t.Errorf("DeletePoint(deleted) = %v, want ErrNotFound", err)
	}
	for _, id := range []string{"", "../config", "nope"} {
		if _, err := r.Point(ctx, id); !errors.Is(err, repository.ErrNotFound) {
			t.Errorf("Point(%q) = %v, want ErrNotFound", id, err)
		}
	}
	got, err := r.ListPoints(ctx, repository.Filter{VMID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{ms[3].ID, ms[0].ID}, ids(got)); diff != "" {
		t.Errorf("ListPoints after delete (-want +got):\n%s", diff)
	}
	// The manifests listed are the caller's: changing them changes no
	// later listing.
	got[0].VMName, got[0].Disks[0].Size = "changed", -1
	again, err := r.ListPoints(ctx, repository.Filter{VMID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if again[0].VMName == "changed" || again[0].Disks[0].Size == -1 {
		t.Errorf("a listed manifest changed by its caller is listed changed: %+v", again[0])
	}
	// Commit refuses an index that does not match the disk.
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	bad := &repository.Manifest{VMID: "a", Disks: []repository.DiskRecord{{ID: "d", Size: 100}}}
	if err := w.Commit(ctx, bad, map[string]*repository.Index{"d": repository.NewIndex(200, 64<<10)}); err == nil {
		t.Errorf("Commit with an index of the wrong size succeeded")
	}
	// ... and one that names a chunk never stored.
	x := repository.NewIndex(100, 64<<10)
	x.Set(0, r.HashChunk([]byte("never stored")))
	if err := w.Commit(ctx, &repository.Manifest{VMID: "a", Disks: []repository.DiskRecord{{ID: "d", Size: 100}}}, map[string]*repository.Index{"d": x}); !errors.Is(err, repository.ErrNotFound) {
		t.Errorf("Commit with a chunk never stored = %v, want ErrNotFound", err)
	}
}

// testSetCodec checks that a writer's codec decides how its new chunks are
// stored, and that they read back with any reader.
func testSetCodec(t *testing.T, mk MakeBucket) {
	const cs = 64 << 10
	ctx := context.Background()
	b := mk(t)
	r := initRepo(t, b, cs, nil)
	data := makeDisk(compressible, 4*cs, 7)
	for _, tc := range []struct {
		codec string
		tag   byte // the first byte of a stored chunk, see package compress
	}{{"none", 0}, {"s2", 2}} {
		w, err := r.NewPointWriter(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.SetCodec(tc.codec); err != nil {
			t.Fatalf("SetCodec(%q): %v", tc.codec, err)
		}
		chunk := append([]byte(tc.codec), data[:cs-len(tc.codec)]...)
		id := r.HashChunk(chunk)
		if _, err := w.PutChunk(ctx, id, chunk); err != nil {
			t.Fatal(err)
		}
		x := repository.NewIndex(cs, cs)
		x.Set(0, id)
		m := &repository.Manifest{VMID: tc.codec, Kind: "full", Consistency: "crash", Disks: []repository.DiskRecord{{ID: "d", Size: cs}}}
		if err := w.Commit(ctx, m, map[string]*repository.Index{"d": x}); err != nil {
			t.Fatal(err)
		}
		stored, err := b.ReadAll(ctx, repository.ChunkKey(id))
		if err != nil {
			t.Fatal(err)
		}
		if stored[0] != tc.tag {
			t.Errorf("codec %s: stored chunk starts with tag %d, want %d", tc.codec, stored[0], tc.tag)
		}
		got, err := readDisk(ctx, r, m, "d")
		if err != nil || !bytes.Equal(got, chunk) {
			t.Errorf("codec %s: read back %d bytes, err %v; want the chunk", tc.codec, len(got), err)
		}
	}
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(ctx)
	if err := w.SetCodec("lz4"); err == nil || !strings.Contains(err.Error(), `"lz4"`) {
		t.Errorf("SetCodec(lz4) = %v, want an error naming the codec", err)
	}
}
