package repository

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	_ "gocloud.dev/blob/memblob"
)

// allocated lists the pages of x that hold memory.
func allocated(x *Index) []int {
	var ks []int
	for k := range x.pages {
		if x.pages[k].Load() != nil {
			ks = append(ks, k)
		}
	}
	return ks
}

func testID(i int) ChunkID { return sha256.Sum256(fmt.Appendf(nil, "slot %d", i)) }

// TestIndexSparse: an index holds memory only for pages with a stored
// chunk, and reads, page bytes, page ids and clones are those of the
// whole flat index.
func TestIndexSparse(t *testing.T) {
	const cs = 256 << 10
	size := int64(3*PageSlots+10)*cs - 1000 // four pages, the last short, the last slot short
	x := NewIndex(size, cs)
	if x.Len() != 3*PageSlots+10 || len(x.pages) != 4 {
		t.Fatalf("Len %d, %d pages; want %d, 4", x.Len(), len(x.pages), 3*PageSlots+10)
	}
	x.Set(5, ZeroChunk)
	x.Set(3*PageSlots+9, ZeroChunk)
	if got := allocated(x); got != nil {
		t.Errorf("pages %v allocated by zero slots, want none", got)
	}
	set := map[int]ChunkID{PageSlots + 1: testID(1), 2*PageSlots - 1: testID(2), 3*PageSlots + 9: testID(3)}
	for i, id := range set {
		x.Set(i, id)
	}
	if got := fmt.Sprint(allocated(x)); got != "[1 3]" {
		t.Errorf("allocated pages %s, want [1 3]", got)
	}
	var nz []int
	for i, id := range x.nonZero() {
		nz = append(nz, i)
		if set[i] != id {
			t.Errorf("nonZero yields slot %d = %v, want %v", i, id, set[i])
		}
	}
	if fmt.Sprint(nz) != fmt.Sprint([]int{PageSlots + 1, 2*PageSlots - 1, 3*PageSlots + 9}) {
		t.Errorf("nonZero yields slots %v", nz)
	}
	// The flat index this one stands for.
	flat := make([]ChunkID, x.Len())
	for i, id := range set {
		flat[i] = id
	}
	for i := range flat {
		if got := x.Get(i); got != flat[i] {
			t.Fatalf("Get(%d) = %v, want %v", i, got, flat[i])
		}
	}
	ids := x.pageIDs()
	for k := range x.pages {
		lo, hi := k*PageSlots, min((k+1)*PageSlots, len(flat))
		want := idBytes(flat[lo:hi])
		if got := x.page(k); string(got) != string(want) {
			t.Errorf("page(%d): %d bytes, differs from the flat index's %d", k, len(got), len(want))
		}
		if ids[k] != sha256.Sum256(want) {
			t.Errorf("pageIDs()[%d] is not the hash of the page", k)
		}
	}

	c := x.Clone()
	c.Set(0, testID(9))
	c.Set(PageSlots+1, testID(8))
	if x.Get(0) != ZeroChunk || x.Get(PageSlots+1) != testID(1) {
		t.Error("setting slots of a clone changed the original")
	}
	if got := fmt.Sprint(allocated(x)); got != "[1 3]" {
		t.Errorf("original's pages after the clone changed: %s", got)
	}
}

// TestIndexConcurrentSet: slots of one unallocated page set at once all
// land (one page wins the race; run with -race).
func TestIndexConcurrentSet(t *testing.T) {
	x := NewIndex(int64(PageSlots)*4096, 4096)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := g; i < PageSlots; i += 8 {
				x.Set(i, testID(i))
			}
		})
	}
	wg.Wait()
	for i := range PageSlots {
		if x.Get(i) != testID(i) {
			t.Fatalf("slot %d lost its id", i)
		}
	}
}

// TestReadIndexKeepsNoZeroPages: pages whose slots are all zero, even if
// they were allocated before being cleared, are stored and verified like
// the others but take no memory once read back.
func TestReadIndexKeepsNoZeroPages(t *testing.T) {
	ctx := context.Background()
	const cs = 64 << 10
	r, err := Init(ctx, "mem://", &InitOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	size := int64(3*PageSlots) * cs
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	x := NewIndex(size, cs)
	p := []byte("data")
	if _, err := w.PutChunk(ctx, r.HashChunk(p), p); err != nil {
		t.Fatal(err)
	}
	x.Set(7, r.HashChunk(p))
	x.Set(2*PageSlots, r.HashChunk(p))
	x.Set(2*PageSlots, ZeroChunk) // page 2 allocated, all zero again
	m := &Manifest{VMID: "vm", Kind: "full", Disks: []DiskRecord{{ID: "d", Size: size}}}
	if err := w.Commit(ctx, m, map[string]*Index{"d": x}); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadIndex(ctx, m.Disks[0].Index)
	if err != nil {
		t.Fatal(err)
	}
	if a := fmt.Sprint(allocated(got)); a != "[0]" {
		t.Errorf("ReadIndex allocated pages %s, want [0]", a)
	}
	for i := range got.Len() {
		if got.Get(i) != x.Get(i) {
			t.Fatalf("slot %d: read %v, committed %v", i, got.Get(i), x.Get(i))
		}
	}
}
