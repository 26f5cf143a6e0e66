package testimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// memImage is an io.WriterAt over a byte slice.
type memImage []byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

func TestLayout(t *testing.T) {
	const size = 256<<20 + 12345
	exts := Layout(size, 7)
	var next int64
	var byKind [3]int64
	for _, e := range exts {
		if e.Offset != next {
			t.Fatalf("extent %+v starts at %d, want %d", e, e.Offset, next)
		}
		if e.Length <= 0 || e.Length > MaxExtent {
			t.Fatalf("extent %+v: length out of range", e)
		}
		if last := e.Offset+e.Length == size; !last && (e.Length < MinExtent || e.Length%Granularity != 0) {
			t.Fatalf("extent %+v: not a multiple of %d in [%d, %d]", e, Granularity, MinExtent, MaxExtent)
		}
		byKind[e.Kind] += e.Length
		next += e.Length
	}
	if next != size {
		t.Fatalf("layout covers %d bytes, want %d", next, size)
	}
	for k, want := range []float64{0.40, 0.30, 0.30} {
		got := float64(byKind[k]) / size
		if got < want-0.07 || got > want+0.07 {
			t.Errorf("%s: %.2f of the image, want about %.2f", Kind(k), got, want)
		}
	}
}

func TestGenerateDeterministicAndRealistic(t *testing.T) {
	ctx := context.Background()
	const size = 16 << 20
	a, b := make(memImage, size), make(memImage, size)
	if err := Generate(ctx, a, size, 42); err != nil {
		t.Fatal(err)
	}
	if err := Generate(ctx, b, size, 42); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two images with the same seed differ")
	}
	c := make(memImage, size)
	if err := Generate(ctx, c, size, 43); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a, c) {
		t.Fatal("images with different seeds are equal")
	}
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	defer enc.Close()
	for _, e := range Layout(size, 42) {
		p := a[e.Offset : e.Offset+e.Length]
		zero := bytes.Count(p, []byte{0}) == len(p)
		ratio := float64(len(p)) / float64(len(enc.EncodeAll(p, nil)))
		switch e.Kind {
		case Hole:
			if !zero {
				t.Fatalf("hole %+v holds data", e)
			}
		case Random:
			if ratio > 1.01 {
				t.Fatalf("random extent %+v compresses %.2fx", e, ratio)
			}
		case Compressible:
			if ratio < 3 {
				t.Fatalf("compressible extent %+v compresses only %.2fx", e, ratio)
			}
		}
	}
}

func TestGenerateFileIsSparseAndMutate(t *testing.T) {
	ctx := context.Background()
	const size = 16<<20 + 4096
	path := filepath.Join(t.TempDir(), "disk.raw")
	if err := GenerateFile(ctx, path, size, 1); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != size {
		t.Fatalf("file has %d bytes, want %d", len(before), size)
	}
	for i, clustered := range []bool{false, true} {
		orig, _ := os.ReadFile(path)
		offs, err := MutateFile(ctx, path, 0.05, int64(9+i), clustered)
		if err != nil {
			t.Fatal(err)
		}
		nblocks := (size + Granularity - 1) / Granularity
		if want := int(float64(nblocks)*0.05 + 0.5); len(offs) != want {
			t.Fatalf("clustered=%v: %d blocks rewritten, want %d", clustered, len(offs), want)
		}
		after, _ := os.ReadFile(path)
		written := map[int64]bool{}
		for _, o := range offs {
			written[o] = true
		}
		for off := int64(0); off < size; off += Granularity {
			end := min(off+Granularity, size)
			same := sha256.Sum256(orig[off:end]) == sha256.Sum256(after[off:end])
			if written[off] == same {
				t.Fatalf("clustered=%v: block at %d: rewritten=%v but unchanged=%v", clustered, off, written[off], same)
			}
		}
	}
}
