package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"iter"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sync/errgroup"
)

// PageSlots is the number of chunk ids in one index page (128 KiB of ids,
// 1 GiB of disk at the default 256 KiB chunks).
const PageSlots = 4096

// rootMagic starts every index root (format version 1).
var rootMagic = [8]byte{'V', 'M', 'B', 'I', 'D', 'X', 0, 1}

const rootHeader = 8 + 8 + 4 + 4 + 4

// maxRootSize bounds a root's decoded size: 2^20 pages is 4 Gi slots.
const maxRootSize = rootHeader + 32<<20

// idPage holds the ids of one index page (the last page of a disk uses
// only its first slots).
type idPage [PageSlots]ChunkID

func newIndex(size int64, chunkSize int) *Index {
	if size < 0 || chunkSize <= 0 {
		panic(fmt.Sprintf("repository: NewIndex(%d, %d): negative size or non-positive chunk size", size, chunkSize))
	}
	n := int((size + int64(chunkSize) - 1) / int64(chunkSize))
	return &Index{size: size, chunkSize: chunkSize, n: n, pages: make([]atomic.Pointer[idPage], pageCount(n))}
}

// check panics, like a slice would, if i is not a slot of x.
func (x *Index) check(i int) {
	if i < 0 || i >= x.n {
		panic(fmt.Sprintf("repository: index slot %d out of range [0, %d)", i, x.n))
	}
}

// pageLen is the number of slots of page k.
func (x *Index) pageLen(k int) int { return min(PageSlots, x.n-k*PageSlots) }

// nonZero yields the slots that hold a stored chunk, with their ids, in
// order; pages without one cost nothing.
func (x *Index) nonZero() iter.Seq2[int, ChunkID] {
	return func(yield func(int, ChunkID) bool) {
		for k := range x.pages {
			p := x.pages[k].Load()
			if p == nil {
				continue
			}
			for j, id := range p[:x.pageLen(k)] {
				if !id.IsZero() && !yield(k*PageSlots+j, id) {
					return
				}
			}
		}
	}
}

// zeroPage is the plaintext of an index page of zero slots (sliced to the
// page's length), shared and never written.
var zeroPage = make([]byte, PageSlots*len(ChunkID{}))

// zeroPageID is the id of a whole page of zero slots.
var zeroPageID = sync.OnceValue(func() ChunkID { return sha256.Sum256(zeroPage) })

// slotLen is the number of disk bytes slot i covers.
func (x *Index) slotLen(i int) int {
	off := int64(i) * int64(x.chunkSize)
	return int(min(int64(x.chunkSize), x.size-off))
}

// pageCount is the number of index pages of a disk with n slots.
func pageCount(n int) int { return (n + PageSlots - 1) / PageSlots }

// page returns the plaintext of page k (the ids of its slots). It is a
// view of x's own memory, not a copy: the caller must not change it, and
// it changes with Set.
func (x *Index) page(k int) []byte {
	p := x.pages[k].Load()
	if p == nil {
		return zeroPage[:x.pageLen(k)*len(ChunkID{})]
	}
	return idBytes(p[:x.pageLen(k)])
}

// idBytes returns the memory of ids as bytes: a [32]byte array has no
// padding, so a []ChunkID is its ids' bytes back to back, which is exactly
// an index page's plaintext. Reading and writing pages through this view
// instead of a copy saves 32 bytes of garbage per slot each time an index
// is read or written (8 MiB for a 64 GiB disk at 256 KiB chunks), which
// showed in the peak memory of incremental backups of large sparse disks.
func idBytes(ids []ChunkID) []byte {
	if len(ids) == 0 {
		return nil
	}
	return unsafe.Slice(&ids[0][0], len(ids)*len(ChunkID{}))
}

// pageIDs returns the id of every page of x.
func (x *Index) pageIDs() []ChunkID {
	ids := make([]ChunkID, len(x.pages))
	for k := range ids {
		if x.pages[k].Load() == nil && x.pageLen(k) == PageSlots {
			ids[k] = zeroPageID()
			continue
		}
		ids[k] = sha256.Sum256(x.page(k))
	}
	return ids
}

// encodeRoot returns the root plaintext of x given its page ids.
func (x *Index) encodeRoot(pages []ChunkID) []byte {
	b := make([]byte, 0, rootHeader+32*len(pages))
	b = append(b, rootMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(x.size))
	b = binary.BigEndian.AppendUint32(b, uint32(x.chunkSize))
	b = binary.BigEndian.AppendUint32(b, PageSlots)
	b = binary.BigEndian.AppendUint32(b, uint32(len(pages)))
	for _, p := range pages {
		b = append(b, p[:]...)
	}
	return b
}

// indexRoot is a decoded index root.
type indexRoot struct {
	size      int64
	chunkSize int
	pages     []ChunkID
}

func decodeRoot(b []byte) (*indexRoot, error) {
	if len(b) < rootHeader || !bytes.Equal(b[:8], rootMagic[:]) {
		return nil, fmt.Errorf("not an index root (bad header)")
	}
	rt := &indexRoot{
		size:      int64(binary.BigEndian.Uint64(b[8:])),
		chunkSize: int(binary.BigEndian.Uint32(b[16:])),
	}
	slots := binary.BigEndian.Uint32(b[20:])
	n := int(binary.BigEndian.Uint32(b[24:]))
	if slots != PageSlots {
		return nil, fmt.Errorf("index root: page of %d slots, want %d", slots, PageSlots)
	}
	if rt.size < 0 || rt.chunkSize < MinChunkSize || rt.chunkSize > MaxChunkSize {
		return nil, fmt.Errorf("index root: size %d, chunk size %d out of range", rt.size, rt.chunkSize)
	}
	nslots := (rt.size + int64(rt.chunkSize) - 1) / int64(rt.chunkSize)
	if int64(n) != (nslots+PageSlots-1)/PageSlots || len(b) != rootHeader+32*n {
		return nil, fmt.Errorf("index root: %d pages in %d bytes for %d slots", n, len(b), nslots)
	}
	rt.pages = make([]ChunkID, n)
	for k := range rt.pages {
		copy(rt.pages[k][:], b[rootHeader+32*k:])
	}
	return rt, nil
}

// parseRootKey returns the id in an index root key.
func parseRootKey(key string) (ChunkID, error) {
	s, ok := strings.CutPrefix(key, rootPrefix)
	if !ok {
		return ChunkID{}, fmt.Errorf("index key %q: not under %s", key, rootPrefix)
	}
	return ParseChunkID(s)
}

// readRoot reads and verifies an index root.
func (r *Repository) readRoot(ctx context.Context, key string) (*indexRoot, error) {
	id, err := parseRootKey(key)
	if err != nil {
		return nil, fmt.Errorf("read index: %w: %w", err, ErrNotFound)
	}
	b, err := r.loadObject(ctx, key, id, maxRootSize, nil)
	if err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	rt, err := decodeRoot(b)
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w: %w", key, err, ErrCorrupt)
	}
	return rt, nil
}

// readPage reads and verifies page k of an index into ids, decoding
// straight into their memory where the codec allows.
func (r *Repository) readPage(ctx context.Context, rootKey string, k int, id ChunkID, ids []ChunkID) error {
	mem := idBytes(ids)
	b, err := r.loadObject(ctx, pageKey(id), id, PageSlots*32, mem[:0])
	if err != nil {
		return fmt.Errorf("read index %s page %d: %w", rootKey, k, err)
	}
	if len(b) != len(mem) {
		return fmt.Errorf("read index %s page %d: %d bytes, want %d: %w", rootKey, k, len(b), len(mem), ErrCorrupt)
	}
	if &b[0] != &mem[0] {
		copy(mem, b) // the decoder did not write in place
	}
	return nil
}

// readIndex loads a whole index, pages in parallel. If pages is not nil,
// the page ids are added to it.
func (r *Repository) readIndex(ctx context.Context, key string, pages func(ChunkID)) (*Index, error) {
	rt, err := r.readRoot(ctx, key)
	if err != nil {
		return nil, err
	}
	x := newIndex(rt.size, rt.chunkSize)
	if len(rt.pages) != len(x.pages) {
		return nil, fmt.Errorf("read index %s: %d pages for %d slots: %w", key, len(rt.pages), x.n, ErrCorrupt)
	}
	// Pages of zero slots are verified like the others but not kept; the
	// buffer that read one is reused.
	spare := make(chan *idPage, max(r.opts.Concurrency, 1))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cap(spare))
	for k, pid := range rt.pages {
		if pages != nil {
			pages(pid)
		}
		g.Go(func() error {
			var p *idPage
			select {
			case p = <-spare:
			default:
				p = new(idPage)
			}
			ids := p[:x.pageLen(k)]
			if err := r.readPage(gctx, key, k, pid, ids); err != nil {
				return err
			}
			if b := idBytes(ids); bytes.Equal(b, zeroPage[:len(b)]) {
				select {
				case spare <- p:
				default:
				}
				return nil
			}
			x.pages[k].Store(p)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return x, nil
}

// scanIndex reads index key page by page and calls fn with each page's
// ids (one call at a time, in no particular order; fn must not keep ids).
// It returns the page ids. Unlike readIndex it never holds the whole
// index: at most Concurrency pages are in memory, so seeding a writer's
// dedup from a huge sparse disk's base costs no more than its distinct
// chunks.
func (r *Repository) scanIndex(ctx context.Context, key string, fn func(ids []ChunkID)) ([]ChunkID, error) {
	rt, err := r.readRoot(ctx, key)
	if err != nil {
		return nil, err
	}
	nslots := int((rt.size + int64(rt.chunkSize) - 1) / int64(rt.chunkSize))
	bufs := make(chan []ChunkID, max(r.opts.Concurrency, 1))
	for range cap(bufs) {
		bufs <- nil // allocated on first use
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(cap(bufs))
	for k, pid := range rt.pages {
		g.Go(func() error {
			buf := <-bufs
			defer func() { bufs <- buf }()
			if buf == nil {
				buf = make([]ChunkID, PageSlots)
			}
			ids := buf[:min(PageSlots, nslots-k*PageSlots)]
			if err := r.readPage(gctx, key, k, pid, ids); err != nil {
				return err
			}
			mu.Lock()
			fn(ids)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return rt.pages, nil
}

// writeIndex stores x's pages (those the writer does not know to be
// stored) and its root, and returns the root's key.
func (w *PointWriter) writeIndex(ctx context.Context, x *Index) (string, error) {
	r := w.r
	mu, known := &w.mu, w.pages
	pids := x.pageIDs()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for k, pid := range pids {
		mu.RLock()
		_, ok := known[pid]
		mu.RUnlock()
		if ok {
			continue
		}
		g.Go(func() error {
			key := pageKey(pid)
			there, err := r.exists(gctx, key)
			if err != nil {
				return fmt.Errorf("write index page %d: %w", k, err)
			}
			if there {
				w.probe(pid)
			} else if _, err := r.storeObject(gctx, key, x.page(k)); err != nil {
				return fmt.Errorf("write index page %d: %w", k, err)
			}
			mu.Lock()
			known[pid] = struct{}{}
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	root := x.encodeRoot(pids)
	rid := sha256.Sum256(root)
	key := rootKey(rid)
	there, err := r.exists(ctx, key)
	if err != nil {
		return "", fmt.Errorf("write index root: %w", err)
	}
	if there {
		w.probe(rid)
	} else {
		if _, err := r.storeObject(ctx, key, root); err != nil {
			return "", fmt.Errorf("write index root: %w", err)
		}
	}
	return key, nil
}
