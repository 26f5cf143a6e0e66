package fake

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// blockSize is the unit in which disk content is stored in memory and
// preserved for snapshots of file-backed disks. It is independent of the
// change tracking granularity.
const blockSize = 64 << 10

// store holds the current content of one disk. The disk's mutex serializes
// writeAt and freeze against each other; readAt is called under the disk's
// read lock.
type store interface {
	readAt(p []byte, off int64) error
	writeAt(p []byte, off int64) error
	// freeze returns an immutable view of the current content.
	freeze() view
	// extents returns where the current content may be non-zero; it is
	// called under the disk's read lock.
	extents() ([]hypervisor.Extent, error)
	close() error
}

// view is a snapshot's picture of a disk. Its readAt may be called
// concurrently with itself and with writes to the store.
type view interface {
	readAt(p []byte, off int64) error
	extents() ([]hypervisor.Extent, error)
	release()
}

// memStore keeps a disk as a sparse map of 64 KiB blocks. A block is never
// changed once a view may refer to it: a write to a block older than the
// latest freeze copies it first (copy-on-write), so views need no lock.
type memStore struct {
	size   int64
	blocks map[int64]*memBlock
	gen    uint64 // blocks made at gen may be written in place
}

type memBlock struct {
	gen  uint64
	data []byte
}

func newMemStore(size int64) *memStore {
	return &memStore{size: size, blocks: map[int64]*memBlock{}}
}

func (s *memStore) blockLen(i int64) int64 { return min(blockSize, s.size-i*blockSize) }

func (s *memStore) readAt(p []byte, off int64) error {
	readBlocks(s.blocks, p, off)
	return nil
}

// readBlocks copies the content at off from blocks into p, zeros for
// missing blocks.
func readBlocks(blocks map[int64]*memBlock, p []byte, off int64) {
	for len(p) > 0 {
		i, o := off/blockSize, off%blockSize
		n := min(int64(len(p)), blockSize-o)
		if b := blocks[i]; b != nil {
			copy(p[:n], b.data[o:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

func (s *memStore) writeAt(p []byte, off int64) error {
	for len(p) > 0 {
		i, o := off/blockSize, off%blockSize
		n := min(int64(len(p)), blockSize-o)
		chunk := p[:n]
		p, off = p[n:], off+n
		b := s.blocks[i]
		if isZero(chunk) {
			switch {
			case b == nil:
				continue // already zeros
			case n == s.blockLen(i):
				delete(s.blocks, i) // a whole block of zeros is a hole
				continue
			}
		}
		switch {
		case b == nil:
			b = &memBlock{gen: s.gen, data: make([]byte, s.blockLen(i))}
			s.blocks[i] = b
		case b.gen != s.gen:
			b = &memBlock{gen: s.gen, data: slices.Clone(b.data)}
			s.blocks[i] = b
		}
		copy(b.data[o:], chunk)
	}
	return nil
}

func (s *memStore) freeze() view {
	v := &memView{size: s.size, blocks: maps.Clone(s.blocks)}
	s.gen++
	return v
}

func (s *memStore) close() error { return nil }

func (s *memStore) extents() ([]hypervisor.Extent, error) {
	return blockExtents(s.blocks, s.size), nil
}

// allocated returns the number of bytes held in memory, for tests.
func (s *memStore) allocated() int64 {
	var n int64
	for _, b := range s.blocks {
		n += int64(len(b.data))
	}
	return n
}

type memView struct {
	size   int64
	blocks map[int64]*memBlock // immutable
}

func (v *memView) readAt(p []byte, off int64) error {
	readBlocks(v.blocks, p, off)
	return nil
}

func (v *memView) extents() ([]hypervisor.Extent, error) {
	return blockExtents(v.blocks, v.size), nil
}

// blockExtents returns the merged extents of the blocks present in a disk
// of size bytes.
func blockExtents(blocks map[int64]*memBlock, size int64) []hypervisor.Extent {
	idx := slices.Sorted(maps.Keys(blocks))
	var out []hypervisor.Extent
	for _, i := range idx {
		off := i * blockSize
		n := min(blockSize, size-off)
		if k := len(out); k > 0 && out[k-1].End() == off {
			out[k-1].Length += n
			continue
		}
		out = append(out, hypervisor.Extent{Offset: off, Length: n})
	}
	return out
}

// release keeps the blocks: a read racing with Release (a caller's bug)
// must not become a data race in the fake; the memory goes with the
// snapshot.
func (v *memView) release() {}

// fileStore keeps a disk in a raw image file. Writes go to the file; before
// a write overwrites a block, the block's old content is copied into memory
// for every open view that has not saved it yet. Views read saved blocks
// from memory and everything else from the file with pread, under a read
// lock that only writes to this disk contend for.
type fileStore struct {
	f    *os.File
	size int64

	mu    sync.RWMutex // guards the file content against views, and views' saved maps
	views map[*fileView]struct{}
}

func openFileStore(path string) (*fileStore, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() <= 0 {
		f.Close()
		return nil, fmt.Errorf("%s: not a non-empty regular file", path)
	}
	return &fileStore{f: f, size: fi.Size(), views: map[*fileView]struct{}{}}, nil
}

func (s *fileStore) readAt(p []byte, off int64) error {
	return s.pread(p, off)
}

// pread reads exactly len(p) bytes at off; the file never ends before
// s.size, but it is tolerated (zeros) in case it was truncated behind the
// fake's back.
func (s *fileStore) pread(p []byte, off int64) error {
	n, err := s.f.ReadAt(p, off)
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return err
}

func (s *fileStore) writeAt(p []byte, off int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.views) > 0 {
		for i := off / blockSize; i <= (off+int64(len(p))-1)/blockSize; i++ {
			var old []byte
			for v := range s.views {
				if _, ok := v.saved[i]; ok {
					continue
				}
				if old == nil {
					old = make([]byte, min(blockSize, s.size-i*blockSize))
					if err := s.pread(old, i*blockSize); err != nil {
						return fmt.Errorf("preserve block %d for a snapshot: %w", i, err)
					}
				}
				v.saved[i] = old
			}
		}
	}
	_, err := s.f.WriteAt(p, off)
	return err
}

func (s *fileStore) freeze() view {
	v := &fileView{s: s, saved: map[int64][]byte{}}
	s.mu.Lock()
	s.views[v] = struct{}{}
	s.mu.Unlock()
	return v
}

func (s *fileStore) close() error { return s.f.Close() }

func (s *fileStore) extents() ([]hypervisor.Extent, error) {
	return fileExtents(s.f, s.size)
}

type fileView struct {
	s     *fileStore
	saved map[int64][]byte // guarded by s.mu
}

func (v *fileView) readAt(p []byte, off int64) error {
	s := v.s
	s.mu.RLock()
	defer s.mu.RUnlock()
	if v.saved == nil {
		// Released while this read was on its way: the file may hold
		// newer data than the snapshot, so there is nothing right to
		// return.
		return errReleased
	}
	if len(v.saved) == 0 {
		return s.pread(p, off)
	}
	// Runs of unsaved blocks are read from the file in one pread each.
	runStart, runOff := 0, off
	flush := func(end int) error {
		if end > runStart {
			return s.pread(p[runStart:end], runOff)
		}
		return nil
	}
	pos := 0
	for pos < len(p) {
		cur := off + int64(pos)
		i, o := cur/blockSize, cur%blockSize
		n := int(min(int64(len(p)-pos), blockSize-o))
		if b, ok := v.saved[i]; ok {
			if err := flush(pos); err != nil {
				return err
			}
			copy(p[pos:pos+n], b[o:])
			runStart, runOff = pos+n, cur+int64(n)
		}
		pos += n
	}
	return flush(len(p))
}

func (v *fileView) extents() ([]hypervisor.Extent, error) {
	// The file's allocation only grows (the fake never punches holes), so
	// what is allocated now covers what the view holds: saved blocks came
	// from allocated ranges or are zeros.
	return fileExtents(v.s.f, v.s.size)
}

func (v *fileView) release() {
	v.s.mu.Lock()
	delete(v.s.views, v)
	v.saved = nil
	v.s.mu.Unlock()
}

var zeros [blockSize]byte

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), blockSize)
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}
