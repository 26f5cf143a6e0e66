// Package testimage makes deterministic, realistic raw disk images for tests,
// examples and benchmarks.
//
// An image is a sequence of extents of 0.5–1.5 MiB, each a multiple of
// [Granularity] (64 KiB). About 40 % of the extents are holes (never
// written, so a sparse file stays sparse), 30 % hold compressible data (log
// lines and database-like pages, which zstd shrinks several times) and 30 %
// hold random data (incompressible, like encrypted or already compressed
// files). The layout and every byte depend only on the size and the seed:
// the same arguments give the same image on every machine, whatever the
// number of goroutines that fill it.
//
// [Mutate] plays a guest that rewrites a fraction of the image's 64 KiB
// blocks, scattered at random or clustered in runs, which is what an
// incremental backup sees between two snapshots.
package testimage

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"

	"golang.org/x/sync/errgroup"
)

// Granularity is the unit of the layout and of mutations: extents start and
// end on multiples of it, and Mutate rewrites whole blocks of this size.
const Granularity = 64 << 10

// Extent lengths are drawn uniformly from [MinExtent, MaxExtent] in steps of
// Granularity.
const (
	MinExtent = 512 << 10
	MaxExtent = 1536 << 10
)

// Kind says what an extent holds.
type Kind int

// Kinds of extents.
const (
	Hole         Kind = iota // never written: reads as zeros, unallocated in a sparse file
	Compressible             // log lines and database pages
	Random                   // incompressible bytes
)

// String returns "hole", "compressible" or "random".
func (k Kind) String() string {
	switch k {
	case Hole:
		return "hole"
	case Compressible:
		return "compressible"
	case Random:
		return "random"
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Extent is one region of the layout: [Offset, Offset+Length).
type Extent struct {
	Offset, Length int64
	Kind           Kind
}

// Layout returns the extents of an image of size bytes made with seed, in
// order and covering [0, size) exactly. The last extent may be shorter than
// MinExtent.
func Layout(size, seed int64) []Extent {
	r := rand.New(rand.NewPCG(uint64(seed), 0x6c61796f7574)) // "layout"
	var out []Extent
	steps := int64((MaxExtent-MinExtent)/Granularity) + 1
	for off := int64(0); off < size; {
		n := MinExtent + r.Int64N(steps)*Granularity
		n = min(n, size-off)
		var k Kind
		switch p := r.IntN(100); {
		case p < 40:
			k = Hole
		case p < 70:
			k = Compressible
		default:
			k = Random
		}
		out = append(out, Extent{Offset: off, Length: n, Kind: k})
		off += n
	}
	return out
}

// Generate writes the image of size bytes made with seed to w, which must
// read as zeros where nothing is written (a new or truncated file, a new
// disk). Holes are not written. Extents are filled concurrently on all
// cores; WriteAt must allow that (os.File does).
func Generate(ctx context.Context, w io.WriterAt, size, seed int64) error {
	if size < 0 {
		return fmt.Errorf("testimage: generate: negative size %d", size)
	}
	exts := Layout(size, seed)
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for i, e := range exts {
		if e.Kind == Hole {
			continue
		}
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			buf := make([]byte, e.Length)
			fill(buf, e.Kind, rand.New(rand.NewPCG(uint64(seed), uint64(i)+1)), e.Offset)
			if _, err := w.WriteAt(buf, e.Offset); err != nil {
				return fmt.Errorf("testimage: write %s extent at %d: %w", e.Kind, e.Offset, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// GenerateFile creates (or truncates) the file at path as a sparse file of
// size bytes and writes the image made with seed into it.
func GenerateFile(ctx context.Context, path string, size, seed int64) (err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("testimage: %w", cerr)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("testimage: %w", err)
	}
	return Generate(ctx, f, size, seed)
}

// Mutate rewrites about fraction (0..1) of the 64 KiB blocks of an image of
// size bytes, chosen with seed, and returns the offsets of the blocks it
// wrote, sorted. Scattered (clustered false), blocks are chosen uniformly;
// clustered, they come in runs of 1–32 adjacent blocks (16 on average). Each
// rewritten block gets new content, half of them compressible and half
// random, stamped with the seed and offset, so it differs from the generated
// image and from mutations made with another seed. The last block of an image
// whose size is not a multiple of Granularity is rewritten only up to size.
func Mutate(ctx context.Context, w io.WriterAt, size int64, fraction float64, seed int64, clustered bool) ([]int64, error) {
	if fraction < 0 || fraction > 1 {
		return nil, fmt.Errorf("testimage: mutate: fraction %v not in [0, 1]", fraction)
	}
	nblocks := (size + Granularity - 1) / Granularity
	want := int64(float64(nblocks)*fraction + 0.5)
	r := rand.New(rand.NewPCG(uint64(seed), 0x6d7574617465)) // "mutate"
	chosen := make(map[int64]bool, want)
	for int64(len(chosen)) < want {
		run := int64(1)
		if clustered {
			run = 1 + r.Int64N(32)
		}
		start := r.Int64N(nblocks)
		for b := start; b < start+run && b < nblocks && int64(len(chosen)) < want; b++ {
			chosen[b] = true
		}
	}
	blocks := make([]int64, 0, len(chosen))
	for b := range chosen {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	buf := make([]byte, Granularity)
	offs := make([]int64, 0, len(blocks))
	for _, b := range blocks {
		if err := ctx.Err(); err != nil {
			return offs, err
		}
		off := b * Granularity
		p := buf[:min(Granularity, size-off)]
		br := rand.New(rand.NewPCG(uint64(seed)^0x9e3779b97f4a7c15, uint64(b)))
		kind := Random
		if br.IntN(2) == 0 {
			kind = Compressible
		}
		fill(p, kind, br, off)
		// Stamp the block so that it differs from any earlier content,
		// including an earlier mutation with another seed.
		binary.LittleEndian.PutUint64(p[0:], uint64(seed))
		binary.LittleEndian.PutUint64(p[8:], uint64(off)|1)
		if _, err := w.WriteAt(p, off); err != nil {
			return offs, fmt.Errorf("testimage: mutate block at %d: %w", off, err)
		}
		offs = append(offs, off)
	}
	return offs, nil
}

// MutateFile is Mutate on the file at path, whose size is the image size.
func MutateFile(ctx context.Context, path string, fraction float64, seed int64, clustered bool) (offs []int64, err error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("testimage: %w", cerr)
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("testimage: %w", err)
	}
	return Mutate(ctx, f, st.Size(), fraction, seed, clustered)
}

// fill fills p with content of kind k; off is p's offset in the image
// (database pages carry their page number).
func fill(p []byte, k Kind, r *rand.Rand, off int64) {
	switch k {
	case Random:
		fillRandom(p, r)
	case Compressible:
		// Alternate between log text and database pages in 64 KiB runs.
		for i := 0; i < len(p); i += Granularity {
			q := p[i:min(i+Granularity, len(p))]
			if r.IntN(2) == 0 {
				fillLog(q, r)
			} else {
				fillPages(q, r, off+int64(i))
			}
		}
	default:
		clear(p)
	}
}

func fillRandom(p []byte, r *rand.Rand) {
	var s [32]byte
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(s[i:], r.Uint64())
	}
	rand.NewChaCha8(s).Read(p)
}

var (
	levels   = []string{"INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"}
	services = []string{"api-gateway", "billing", "auth", "inventory", "scheduler", "mailer", "search"}
	methods  = []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	paths    = []string{"/api/v1/items/", "/api/v1/users/", "/api/v2/orders/", "/healthz", "/api/v1/invoices/", "/static/app.js?v="}
	messages = []string{"request completed", "cache miss, loading from database", "retrying upstream call", "session refreshed", "slow query detected", "connection pool exhausted, waiting"}
	words    = []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"}
)

// fillLog writes log lines until p is full (the last one cut).
func fillLog(p []byte, r *rand.Rand) {
	line := make([]byte, 0, 256)
	ts := int64(1_764_000_000_000) + r.Int64N(1<<30)
	for n := 0; n < len(p); {
		ts += r.Int64N(2000)
		line = line[:0]
		line = strconv.AppendInt(line, ts/1000, 10)
		line = append(line, '.')
		ms := ts % 1000
		line = append(line, byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10))
		line = append(line, ' ')
		line = append(line, levels[r.IntN(len(levels))]...)
		line = append(line, " ["...)
		line = append(line, services[r.IntN(len(services))]...)
		line = append(line, "] "...)
		line = append(line, messages[r.IntN(len(messages))]...)
		line = append(line, " method="...)
		line = append(line, methods[r.IntN(len(methods))]...)
		line = append(line, " path="...)
		line = append(line, paths[r.IntN(len(paths))]...)
		line = strconv.AppendInt(line, r.Int64N(100000), 10)
		line = append(line, " status="...)
		line = strconv.AppendInt(line, 200+int64(r.IntN(4))*100*int64(r.IntN(2)), 10)
		line = append(line, " latency_ms="...)
		line = strconv.AppendInt(line, r.Int64N(900)+1, 10)
		line = append(line, " req="...)
		line = strconv.AppendUint(line, r.Uint64()&0xffffffff, 16)
		line = append(line, '\n')
		n += copy(p[n:], line)
	}
}

// fillPages writes 8 KiB database-like pages: a header, rows of typed
// columns growing from the start, and free space (zeros) at the end.
func fillPages(p []byte, r *rand.Rand, off int64) {
	const page = 8 << 10
	for i := 0; i < len(p); i += page {
		q := p[i:min(i+page, len(p))]
		clear(q)
		if len(q) < 32 {
			continue
		}
		binary.LittleEndian.PutUint64(q[0:], uint64(off+int64(i))/page) // page number
		binary.LittleEndian.PutUint64(q[8:], r.Uint64())                // LSN / checksum
		used := 32 + r.IntN(len(q)-32)
		id := r.Int64N(1 << 40)
		for n := 32; n+64 <= used; {
			row := q[n:]
			id++
			binary.LittleEndian.PutUint64(row[0:], uint64(id))
			binary.LittleEndian.PutUint32(row[8:], uint32(1_700_000_000+r.IntN(1<<24)))
			binary.LittleEndian.PutUint32(row[12:], uint32(r.IntN(10000)))
			k := copy(row[16:48], words[r.IntN(len(words))])
			copy(row[16+k:48], words[r.IntN(len(words))])
			binary.LittleEndian.PutUint64(row[48:], uint64(r.IntN(1000))*25)
			binary.LittleEndian.PutUint64(row[56:], 0)
			n += 64
		}
	}
}
