package avetest

import (
	"bytes"
	"sort"
)

// BlockSize is the granularity of the server's sparse volumes: 64 KiB.
const BlockSize = 64 << 10

// sparse is a volume's content: a map of 64 KiB blocks, absent blocks read
// as zeros. Blocks are immutable once stored, so a copy of the map is a
// copy-on-write snapshot: a write replaces the block it touches with a new
// one and never changes a block another map may share.
type sparse struct {
	size   int64
	blocks map[int64]*[BlockSize]byte
}

func newSparse(size int64) *sparse {
	return &sparse{size: size, blocks: map[int64]*[BlockSize]byte{}}
}

// clone returns a copy-on-write copy.
func (s *sparse) clone() *sparse {
	c := &sparse{size: s.size, blocks: make(map[int64]*[BlockSize]byte, len(s.blocks))}
	for k, v := range s.blocks {
		c.blocks[k] = v
	}
	return c
}

var zeroBlock [BlockSize]byte

// writeAt writes p at off; the caller checks bounds.
func (s *sparse) writeAt(p []byte, off int64) {
	for len(p) > 0 {
		bi := off / BlockSize
		bo := off % BlockSize
		n := min(int64(len(p)), BlockSize-bo)
		old := s.blocks[bi]
		nb := new([BlockSize]byte)
		if old != nil {
			*nb = *old
		}
		copy(nb[bo:], p[:n])
		if *nb == zeroBlock {
			delete(s.blocks, bi)
		} else {
			s.blocks[bi] = nb
		}
		p = p[n:]
		off += n
	}
}

// readAt fills p from off; bytes past size are not touched.
func (s *sparse) readAt(p []byte, off int64) int {
	if off >= s.size {
		return 0
	}
	if int64(len(p)) > s.size-off {
		p = p[:s.size-off]
	}
	done := 0
	for done < len(p) {
		bi := off / BlockSize
		bo := off % BlockSize
		n := min(int64(len(p)-done), BlockSize-bo)
		if b := s.blocks[bi]; b != nil {
			copy(p[done:done+int(n)], b[bo:bo+n])
		} else {
			clear(p[done : done+int(n)])
		}
		done += int(n)
		off += n
	}
	return done
}

// equal reports whether two volumes hold the same bytes.
func (s *sparse) equal(o *sparse) bool {
	if s.size != o.size {
		return false
	}
	keys := map[int64]bool{}
	for k := range s.blocks {
		keys[k] = true
	}
	for k := range o.blocks {
		keys[k] = true
	}
	for k := range keys {
		a, b := s.blocks[k], o.blocks[k]
		if a == nil {
			a = &zeroBlock
		}
		if b == nil {
			b = &zeroBlock
		}
		if !bytes.Equal(a[:], b[:]) {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
