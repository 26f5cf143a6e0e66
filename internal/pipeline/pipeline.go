// Package pipeline holds the pieces that the backup and restore pipelines
// share: a bounded pool of chunk buffers, fast zero detection, the mapping
// between byte extents and chunk slots, and a work cursor over slots.
//
// # Memory
//
// Every chunk in flight (being read, hashed, compressed, uploaded, or
// downloaded and written) holds one buffer from a [Pool]. A Pool hands out
// at most its capacity of buffers and makes further callers wait, so the
// memory of all pipelines that share it is bounded by capacity × chunk size,
// whatever the size or number of disks. Buffers are allocated lazily and
// reused for the life of the pool: no allocation per chunk.
//
// # Slots
//
// A disk of Size bytes is cut into slots of ChunkSize bytes, slot i covering
// [i*ChunkSize, min((i+1)*ChunkSize, Size)). Extents reported by a
// hypervisor (allocated, changed) map onto the slots they touch with
// [Touched]; the parts of one slot that must be read are found with
// [Within].
package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Pool is a bounded pool of equal-size byte buffers. It is safe for
// concurrent use.
type Pool struct {
	size int
	sem  chan struct{} // one token per buffer handed out
	mu   sync.Mutex
	free [][]byte
}

// NewPool returns a pool of at most capacity buffers of size bytes each.
// capacity < 1 is treated as 1.
func NewPool(size, capacity int) *Pool {
	return &Pool{size: size, sem: make(chan struct{}, max(capacity, 1))}
}

// BufSize is the length of the pool's buffers.
func (p *Pool) BufSize() int { return p.size }

// Cap is the most buffers the pool hands out at once.
func (p *Pool) Cap() int { return cap(p.sem) }

// Get returns a buffer of BufSize bytes (with arbitrary content), waiting
// while Cap buffers are out. It returns ctx's error if ctx ends first.
func (p *Pool) Get(ctx context.Context) ([]byte, error) {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b, nil
	}
	return make([]byte, p.size), nil
}

// Put returns a buffer obtained from Get. The caller must not use it
// afterwards.
func (p *Pool) Put(b []byte) {
	if cap(b) < p.size {
		panic(fmt.Sprintf("pipeline: Put of a %d-byte buffer into a pool of %d-byte buffers", cap(b), p.size))
	}
	p.mu.Lock()
	p.free = append(p.free, b[:p.size])
	p.mu.Unlock()
	<-p.sem
}

// zeros is compared against; bytes.Equal runs at memory speed (SIMD), far
// faster than hashing, so zero chunks cost almost nothing.
var zeros = make([]byte, 1<<20)

// IsZero reports whether every byte of p is zero.
func IsZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// Span is a half-open range of slot numbers [Lo, Hi).
type Span struct{ Lo, Hi int }

// Len is the number of slots in the span.
func (s Span) Len() int { return s.Hi - s.Lo }

// Slots returns the number of slots of a disk of size bytes.
func Slots(size int64, chunkSize int) int {
	return int((size + int64(chunkSize) - 1) / int64(chunkSize))
}

// SlotRange returns the byte range [off, end) that slot i covers.
func SlotRange(i int, size int64, chunkSize int) (off, end int64) {
	off = int64(i) * int64(chunkSize)
	return off, min(off+int64(chunkSize), size)
}

// Touched returns the sorted, merged spans of slots that the extents touch.
// exts must be sorted and non-overlapping (as hypervisor extents are);
// parts beyond size are ignored.
func Touched(exts []hypervisor.Extent, size int64, chunkSize int) []Span {
	var out []Span
	cs := int64(chunkSize)
	for _, e := range exts {
		end := min(e.End(), size)
		if e.Length <= 0 || e.Offset >= end {
			continue
		}
		lo, hi := int(e.Offset/cs), int((end+cs-1)/cs)
		if n := len(out); n > 0 && lo <= out[n-1].Hi {
			out[n-1].Hi = max(out[n-1].Hi, hi)
			continue
		}
		out = append(out, Span{lo, hi})
	}
	return out
}

// All returns the one span of every slot of a disk, or none for an empty disk.
func All(size int64, chunkSize int) []Span {
	if n := Slots(size, chunkSize); n > 0 {
		return []Span{{0, n}}
	}
	return nil
}

// Count is the total number of slots in spans.
func Count(spans []Span) int {
	n := 0
	for _, s := range spans {
		n += s.Len()
	}
	return n
}

// Within appends to dst the parts of [off, end) covered by exts (sorted,
// non-overlapping) and returns it. A nil exts means everything is covered.
func Within(dst []hypervisor.Extent, exts []hypervisor.Extent, off, end int64) []hypervisor.Extent {
	if exts == nil {
		return append(dst, hypervisor.Extent{Offset: off, Length: end - off})
	}
	i := sort.Search(len(exts), func(i int) bool { return exts[i].End() > off })
	for ; i < len(exts) && exts[i].Offset < end; i++ {
		lo, hi := max(exts[i].Offset, off), min(exts[i].End(), end)
		if hi > lo {
			if n := len(dst); n > 0 && dst[n-1].End() == lo {
				dst[n-1].Length += hi - lo
				continue
			}
			dst = append(dst, hypervisor.Extent{Offset: lo, Length: hi - lo})
		}
	}
	return dst
}

// Cursor hands out the slots of a list of spans in order, one at a time,
// to concurrent workers, so that reads stay close to sequential.
type Cursor struct {
	mu    sync.Mutex
	spans []Span
	next  int
}

// NewCursor returns a cursor over spans (sorted).
func NewCursor(spans []Span) *Cursor {
	c := &Cursor{spans: spans}
	if len(spans) > 0 {
		c.next = spans[0].Lo
	}
	return c
}

// Next returns the next slot and true, or false when all are handed out.
func (c *Cursor) Next() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.spans) > 0 {
		if c.next < c.spans[0].Hi {
			i := c.next
			c.next++
			return i, true
		}
		c.spans = c.spans[1:]
		if len(c.spans) > 0 {
			c.next = c.spans[0].Lo
		}
	}
	return 0, false
}

// ReadFull reads exactly len(p) bytes at off from r. An io.EOF that comes
// with a full read (a read ending at the end of the disk) is not an error;
// a short read is io.ErrUnexpectedEOF.
func ReadFull(r io.ReaderAt, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := r.ReadAt(p, off)
		p, off = p[n:], off+int64(n)
		if len(p) == 0 {
			return nil
		}
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrNoProgress
		}
	}
	return nil
}

// Meter counts bytes done out of a known total and calls a report function
// each time about one percent more is done (and at least every step bytes
// when the total is large), and when the total is reached, so progress
// costs nothing per chunk. It is safe for concurrent use; report may be
// called from several goroutines, but never twice for the same count.
type Meter struct {
	total  int64
	step   int64
	done   atomic.Int64
	next   atomic.Int64
	report func(done, total int64)
}

// NewMeter returns a meter for total bytes; report may be nil.
func NewMeter(total int64, report func(done, total int64)) *Meter {
	step := max(total/100, 1)
	step = min(step, 64<<20)
	m := &Meter{total: total, step: step, report: report}
	m.next.Store(step)
	return m
}

// Add records n more bytes done.
func (m *Meter) Add(n int64) {
	d := m.done.Add(n)
	if m.report == nil {
		return
	}
	for {
		next := m.next.Load()
		if d < next && d < m.total {
			return
		}
		if m.next.CompareAndSwap(next, d+m.step) {
			m.report(d, m.total)
			return
		}
	}
}

// Done is the count so far.
func (m *Meter) Done() int64 { return m.done.Load() }

// Total is the expected count.
func (m *Meter) Total() int64 { return m.total }
