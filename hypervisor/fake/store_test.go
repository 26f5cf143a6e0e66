package fake

import (
	"bytes"
	"testing"
)

// TestMemStoreIsSparse checks that memory follows written data, not disk
// size, and that copy-on-write copies only the blocks written after a
// snapshot.
func TestMemStoreIsSparse(t *testing.T) {
	s := newMemStore(100 << 30)
	check := func(what string, want int64) {
		t.Helper()
		if got := s.allocated(); got != want {
			t.Errorf("%s: %d bytes allocated, want %d", what, got, want)
		}
	}
	check("new 100 GiB disk", 0)
	s.writeAt([]byte{1}, 50<<30)
	check("one byte written", blockSize)
	s.writeAt(make([]byte, 3*blockSize), 10<<30)
	check("zeros written over a hole", blockSize)
	s.writeAt(bytes.Repeat([]byte{2}, 2*blockSize), 20<<30)
	check("two blocks written", 3*blockSize)

	v := s.freeze()
	s.writeAt([]byte{3}, 20<<30)
	check("a frozen block overwritten (the view keeps the old one)", 3*blockSize)
	if n := len(v.(*memView).blocks); n != 3 {
		t.Errorf("view holds %d blocks, want 3", n)
	}
	got := make([]byte, 1)
	v.readAt(got, 20<<30)
	if got[0] != 2 {
		t.Errorf("view reads %d after a write to the store, want 2", got[0])
	}
	s.writeAt(make([]byte, blockSize), 20<<30)
	check("a whole block zeroed", 2*blockSize)
}
