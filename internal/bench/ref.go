package main

// The reference pipeline: the least work that a chunked, deduplicating,
// compressing backup of a raw image can do on this machine, written plainly
// so that its time is what the hardware allows, not what a design costs.
//
// Backup: find the allocated extents (SEEK_DATA/SEEK_HOLE), cut the image
// into fixed chunks aligned to offsets, and on every core: read a chunk's
// allocated parts, skip it if all zeros, SHA-256 it, skip it if the
// repository has it (known from the previous point's index, else one stat),
// compress it with the codec vmbackup uses, and write it
// as one file (chunks/<2 hex>/<64 hex>). The index (one id per slot) is one
// file. A backup ends with syncfs(2): like vmbackup's (and restic's), it
// is done when its data is durable. The incremental with change tracking handles only the chunks that
// the mutation touched (as a hypervisor's dirty bitmap would report them);
// the one without reads and hashes every allocated chunk. Restore reads the
// index, and on every core reads, decompresses, verifies (SHA-256) and
// writes each non-zero chunk at its offset of a new sparse file (pwrite
// through the page cache); zero chunks stay holes.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sync/errgroup"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/internal/fsflush"
)

// refRepo is the reference pipeline's repository: a directory.
type refRepo struct {
	dir   string
	codec compress.Codec
	cs    int64

	mu   sync.Mutex
	have map[[32]byte]bool // chunks known to be stored

	// packs: chunks are appended to pack files of about packSize bytes
	// (one open pack per worker) instead of one file each, with no stat
	// before writing: this prices the one-file-per-chunk layout.
	packs   bool
	packSeq atomic.Int64
}

// packSize is the size at which a worker starts a new pack file.
const packSize = 16 << 20

// packFile is a worker's open pack.
type packFile struct {
	f *os.File
	n int64
}

// write appends enc to the worker's pack, starting a new one when full.
func (p *packFile) write(r *refRepo, enc []byte) error {
	if p.f == nil || p.n >= packSize {
		if err := p.close(); err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(r.dir, "packs", fmt.Sprint(r.packSeq.Add(1))))
		if err != nil {
			return err
		}
		p.f, p.n = f, 0
	}
	_, err := p.f.Write(enc)
	p.n += int64(len(enc))
	return err
}

func (p *packFile) close() error {
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}

func openRefRepo(dir string, chunkSize int64, codec string, packs bool) (*refRepo, error) {
	c, err := compress.Lookup(codec)
	if err != nil {
		return nil, err
	}
	dirs := []string{"packs"}
	if !packs {
		dirs = dirs[:0]
		for i := range 256 {
			dirs = append(dirs, filepath.Join("chunks", fmt.Sprintf("%02x", i)))
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "index"), 0o755); err != nil {
		return nil, err
	}
	return &refRepo{dir: dir, codec: c, cs: chunkSize, have: map[[32]byte]bool{}, packs: packs}, nil
}

func (r *refRepo) chunkPath(id [32]byte) string {
	h := hex.EncodeToString(id[:])
	return filepath.Join(r.dir, "chunks", h[:2], h)
}

// refIndex is one id per slot; the zero id is an all-zero chunk.
type refIndex struct {
	size int64
	ids  [][32]byte
}

func (r *refRepo) writeIndex(name string, x *refIndex) error {
	b := make([]byte, 8, 8+32*len(x.ids))
	binary.LittleEndian.PutUint64(b, uint64(x.size))
	for _, id := range x.ids {
		b = append(b, id[:]...)
	}
	return os.WriteFile(filepath.Join(r.dir, "index", name), b, 0o644)
}

func (r *refRepo) readIndex(name string) (*refIndex, error) {
	b, err := os.ReadFile(filepath.Join(r.dir, "index", name))
	if err != nil {
		return nil, err
	}
	if len(b) < 8 || (len(b)-8)%32 != 0 {
		return nil, fmt.Errorf("index %s: corrupt (%d bytes)", name, len(b))
	}
	x := &refIndex{size: int64(binary.LittleEndian.Uint64(b))}
	for p := b[8:]; len(p) > 0; p = p[32:] {
		x.ids = append(x.ids, [32]byte(p[:32]))
	}
	return x, nil
}

// knowIndex marks every chunk of x as stored (the previous point's chunks:
// the same in-memory dedup that vmbackup's PointWriter gets from its base).
func (r *refRepo) knowIndex(x *refIndex) {
	for _, id := range x.ids {
		r.have[id] = true
	}
}

// zeros is compared against to find all-zero chunks.
var zeros = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeros))
		if !bytes.Equal(p[:n], zeros[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// refBackupStats counts a backup's work.
type refBackupStats struct {
	read, stored int64
}

// backup stores the slots of image listed in slots into x (which has
// len(x.ids) slots), on all cores.
func (r *refRepo) backup(ctx context.Context, image string, x *refIndex, slots []int) (refBackupStats, error) {
	f, err := os.Open(image)
	if err != nil {
		return refBackupStats{}, err
	}
	defer f.Close()
	ext, err := dataExtents(f, x.size)
	if err != nil {
		return refBackupStats{}, err
	}
	var next atomic.Int64
	var read, stored atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for range runtime.GOMAXPROCS(0) {
		g.Go(func() (err error) {
			buf := make([]byte, r.cs)
			var enc []byte
			var pack packFile
			defer func() {
				if cerr := pack.close(); err == nil {
					err = cerr
				}
			}()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(slots) || ctx.Err() != nil {
					return ctx.Err()
				}
				i := slots[k]
				off := int64(i) * r.cs
				end := min(off+r.cs, x.size)
				p := buf[:end-off]
				clear(p)
				any := false
				for _, e := range within(ext, off, end) {
					if _, err := f.ReadAt(p[e.off-off:e.off+e.n-off], e.off); err != nil {
						return fmt.Errorf("read %s at %d: %w", image, e.off, err)
					}
					read.Add(e.n)
					any = true
				}
				if !any || isZero(p) {
					x.ids[i] = [32]byte{}
					continue
				}
				id := sha256.Sum256(p)
				x.ids[i] = id
				r.mu.Lock()
				dup := r.have[id]
				r.have[id] = true
				r.mu.Unlock()
				if dup {
					continue
				}
				// Not in the base point: ask the repository, as a
				// PointWriter asks its bucket.
				if !r.packs {
					if _, err := os.Stat(r.chunkPath(id)); err == nil {
						continue
					}
				}
				enc = compress.Encode(enc[:0], r.codec, p)
				if r.packs {
					err = pack.write(r, enc)
				} else {
					err = os.WriteFile(r.chunkPath(id), enc, 0o644)
				}
				if err != nil {
					return err
				}
				stored.Add(int64(len(enc)))
			}
		})
	}
	err = g.Wait()
	return refBackupStats{read.Load(), stored.Load()}, err
}

// within returns the parts of ext inside [off, end). ext is sorted.
func within(ext []extent, off, end int64) []extent {
	i, _ := slices.BinarySearchFunc(ext, off, func(e extent, t int64) int {
		switch {
		case e.off+e.n <= t:
			return -1
		case e.off > t:
			return 1
		}
		return 0
	})
	var out []extent
	for ; i < len(ext) && ext[i].off < end; i++ {
		s, t := max(ext[i].off, off), min(ext[i].off+ext[i].n, end)
		if s < t {
			out = append(out, extent{s, t - s})
		}
	}
	return out
}

// allocatedSlots lists the slots of chunk size cs that hold allocated
// bytes of image.
func allocatedSlots(image string, cs int64) (size int64, slots []int, err error) {
	size, ext, err := fileExtents(image)
	if err != nil {
		return 0, nil, err
	}
	last := -1
	for _, e := range ext {
		for i := int(e.off / cs); int64(i)*cs < e.off+e.n; i++ {
			if i != last {
				slots = append(slots, i)
				last = i
			}
		}
	}
	return size, slots, nil
}

// refFull backs up image into a new index named name, into pack files
// if packs (see refRepo).
func refFull(ctx context.Context, repoDir, image, name string, cs int64, codec string, packs bool) (refBackupStats, error) {
	r, err := openRefRepo(repoDir, cs, codec, packs)
	if err != nil {
		return refBackupStats{}, err
	}
	size, slots, err := allocatedSlots(image, cs)
	if err != nil {
		return refBackupStats{}, err
	}
	x := &refIndex{size: size, ids: make([][32]byte, (size+cs-1)/cs)}
	st, err := r.backup(ctx, image, x, slots)
	if err != nil {
		return st, err
	}
	if err := r.writeIndex(name, x); err != nil {
		return st, err
	}
	return st, fsflush.Flush(repoDir)
}

// refIncremental backs up image as a new index name based on index base.
// With changed (block offsets of blockSize bytes, as change tracking would
// report them) only the chunks they touch are read; without, every
// allocated chunk is read and hashed, and only new ones are stored.
func refIncremental(ctx context.Context, repoDir, image, base, name string, cs int64, codec string, changed []int64, blockSize int64, tracked bool) (refBackupStats, error) {
	r, err := openRefRepo(repoDir, cs, codec, false)
	if err != nil {
		return refBackupStats{}, err
	}
	prev, err := r.readIndex(base)
	if err != nil {
		return refBackupStats{}, err
	}
	r.knowIndex(prev)
	x := &refIndex{size: prev.size, ids: slices.Clone(prev.ids)}
	var slots []int
	if tracked {
		last := -1
		for _, b := range changed {
			for i := int(b / cs); int64(i)*cs < b+blockSize && int64(i)*cs < x.size; i++ {
				if i != last {
					slots = append(slots, i)
					last = i
				}
			}
		}
	} else {
		size, all, err := allocatedSlots(image, cs)
		if err != nil {
			return refBackupStats{}, err
		}
		if size != x.size {
			return refBackupStats{}, fmt.Errorf("image %s has %d bytes, index %s %d", image, size, base, x.size)
		}
		// Slots allocated before but not now are zero now.
		x.ids = make([][32]byte, len(prev.ids))
		slots = all
	}
	st, err := r.backup(ctx, image, x, slots)
	if err != nil {
		return st, err
	}
	if err := r.writeIndex(name, x); err != nil {
		return st, err
	}
	return st, fsflush.Flush(repoDir)
}

// refRestore writes index name into a new sparse file target. With direct,
// whole chunks are written with O_DIRECT (bypassing the page cache, whose
// fresh pages are expensive on some VMs) from aligned buffers; a chunk
// that is not a multiple of the logical block size (the last one) goes
// through the page cache.
func refRestore(ctx context.Context, repoDir, name, target string, cs int64, direct bool) (written int64, err error) {
	r, err := openRefRepo(repoDir, cs, compress.Default, false)
	if err != nil {
		return 0, err
	}
	x, err := r.readIndex(name)
	if err != nil {
		return 0, err
	}
	f, err := os.OpenFile(target, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := f.Truncate(x.size); err != nil {
		return 0, err
	}
	df := f
	if direct {
		if df, err = os.OpenFile(target, os.O_RDWR|syscall.O_DIRECT, 0); err != nil {
			return 0, fmt.Errorf("open %s with O_DIRECT: %w", target, err)
		}
		defer df.Close()
	}
	var next, n atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	workers := runtime.GOMAXPROCS(0)
	if direct {
		// O_DIRECT writes block until the device has the data: more of
		// them in flight keep both the CPUs and the device busy.
		workers *= 4
	}
	for range workers {
		g.Go(func() error {
			var enc []byte
			dec := alignedBuffer(int(cs))
			for {
				i := int(next.Add(1) - 1)
				if i >= len(x.ids) || ctx.Err() != nil {
					return ctx.Err()
				}
				id := x.ids[i]
				if id == ([32]byte{}) {
					continue
				}
				var err error
				if enc, err = readFileInto(enc[:0], r.chunkPath(id)); err != nil {
					return err
				}
				p, err := compress.Decode(dec[:0], enc, int(cs))
				if err != nil {
					return fmt.Errorf("chunk %x: %w", id, err)
				}
				if sha256.Sum256(p) != id {
					return fmt.Errorf("chunk %x: content does not match its id", id)
				}
				w := f
				if direct && len(p)%directAlign == 0 && &p[0] == &dec[0] {
					w = df
				}
				if _, err := w.WriteAt(p, int64(i)*cs); err != nil {
					return fmt.Errorf("write %s at %d: %w", target, int64(i)*cs, err)
				}
				n.Add(int64(len(p)))
			}
		})
	}
	return n.Load(), g.Wait()
}

// directAlign is the alignment O_DIRECT needs of buffers, offsets and
// lengths (the largest logical block size in use).
const directAlign = 4096

// alignedBuffer returns a buffer of n bytes (capacity n) whose first byte
// is aligned to directAlign.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	return b[off : off+n : off+n]
}

// readFileInto appends the content of path to dst.
func readFileInto(dst []byte, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return dst, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return dst, err
	}
	dst = slices.Grow(dst, int(st.Size()))
	n, err := f.ReadAt(dst[len(dst):len(dst)+int(st.Size())], 0)
	if n != int(st.Size()) {
		return dst, fmt.Errorf("read %s: %w", path, err)
	}
	return dst[:len(dst)+n], nil
}
