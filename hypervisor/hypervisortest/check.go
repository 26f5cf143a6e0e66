package hypervisortest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

// span is a half-open byte range [off, end) used by the checks; it keeps
// the arithmetic readable where hypervisor.Extent would need End() calls.
type span struct{ off, end int64 }

func (s span) String() string { return fmt.Sprintf("[%d,%d)", s.off, s.end) }

// checkExtents fails the test unless ext is valid (see validExtents).
func checkExtents(t *testing.T, what string, ext []hypervisor.Extent, size int64) bool {
	t.Helper()
	if err := validExtents(ext, size); err != nil {
		t.Errorf("%s: %v", what, err)
		return false
	}
	return true
}

// validExtents says why ext is not sorted, non-overlapping, made of
// non-empty extents and within [0, size), or returns nil.
func validExtents(ext []hypervisor.Extent, size int64) error {
	var prevEnd int64
	for i, e := range ext {
		switch {
		case e.Length <= 0:
			return fmt.Errorf("extent %d %+v has a non-positive length", i, e)
		case e.Offset < 0 || e.End() > size:
			return fmt.Errorf("extent %d %+v is outside the disk [0,%d)", i, e, size)
		case i > 0 && e.Offset < prevEnd:
			return fmt.Errorf("extent %d %+v overlaps or precedes the previous one, which ends at %d", i, e, prevEnd)
		}
		prevEnd = e.End()
	}
	return nil
}

// toSpans converts valid extents to merged spans (adjacent extents joined).
func toSpans(ext []hypervisor.Extent) []span {
	var out []span
	for _, e := range ext {
		if e.Length <= 0 {
			continue
		}
		s := span{e.Offset, e.End()}
		if n := len(out); n > 0 && s.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// mergeSpans sorts and merges possibly overlapping spans.
func mergeSpans(in []span) []span {
	in = slices.Clone(in)
	slices.SortFunc(in, func(a, b span) int {
		switch {
		case a.off < b.off:
			return -1
		case a.off > b.off:
			return 1
		}
		return 0
	})
	var out []span
	for _, s := range in {
		if s.end <= s.off {
			continue
		}
		if n := len(out); n > 0 && s.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, s.end)
			continue
		}
		out = append(out, s)
	}
	return out
}

// uncovered returns the parts of want not inside have. Both must be merged.
func uncovered(want, have []span) []span {
	var out []span
	j := 0
	for _, w := range want {
		cur := w.off
		for j < len(have) && have[j].end <= cur {
			j++
		}
		k := j
		for cur < w.end {
			if k >= len(have) || have[k].off >= w.end {
				out = append(out, span{cur, w.end})
				break
			}
			if have[k].off > cur {
				out = append(out, span{cur, have[k].off})
			}
			cur = max(cur, have[k].end)
			k++
		}
	}
	return out
}

// diffSpans returns the ranges where a and b (same length) differ.
func diffSpans(a, b []byte) []span {
	var out []span
	const step = 4 * kib
	for off := 0; off < len(a); off += step {
		end := min(off+step, len(a))
		if bytes.Equal(a[off:end], b[off:end]) {
			continue
		}
		for i := off; i < end; i++ {
			if a[i] == b[i] {
				continue
			}
			if n := len(out); n > 0 && out[n-1].end == int64(i) {
				out[n-1].end++
			} else {
				out = append(out, span{int64(i), int64(i) + 1})
			}
		}
	}
	return out
}

// nonZeroSpans returns the ranges of p that hold non-zero bytes.
func nonZeroSpans(p []byte) []span {
	zero := make([]byte, len(p))
	return diffSpans(p, zero)
}

// expand widens each span to multiples of g (g > 0).
func expand(in []span, g int64) []span {
	out := make([]span, len(in))
	for i, s := range in {
		out[i] = span{s.off / g * g, (s.end + g - 1) / g * g}
	}
	return mergeSpans(out)
}

// fmtSpans prints at most a few spans.
func fmtSpans(s []span) string {
	const most = 5
	if len(s) <= most {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%v ... (%d in all)", s[:most], len(s))
}

// compareBytes fails the test if got differs from want, naming the first
// differing ranges instead of dumping the bytes.
func compareBytes(t *testing.T, what string, got, want []byte) bool {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d bytes, want %d", what, len(got), len(want))
		return false
	}
	if d := diffSpans(got, want); len(d) > 0 {
		t.Errorf("%s: content differs at %s", what, fmtSpans(d))
		return false
	}
	return true
}

// readAll reads a whole disk with ReadAt in pieces of 256 KiB.
func readAll(t *testing.T, what string, r io.ReaderAt, size int64) []byte {
	t.Helper()
	buf := make([]byte, size)
	const piece = 256 * kib
	for off := int64(0); off < size; off += piece {
		end := min(off+piece, size)
		n, err := r.ReadAt(buf[off:end], off)
		if n != int(end-off) || (err != nil && !(err == io.EOF && end == size)) {
			t.Fatalf("%s: ReadAt(%d bytes at %d) = %d, %v", what, end-off, off, n, err)
		}
	}
	return buf
}

// errIs fails the test unless errors.Is(err, target).
func errIs(t *testing.T, what string, err, target error) bool {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want one wrapping %v", what, err, target)
		return false
	}
	return true
}

// randWrite picks a write for a disk of the given size: a mix of tiny,
// unaligned, block-straddling, large and end-of-disk writes, with random
// (or, now and then, all-zero) content.
func randWrite(rng *rand.Rand, size int64) (off int64, p []byte) {
	var n int64
	switch rng.IntN(5) {
	case 0: // tiny, anywhere
		n = 1 + rng.Int64N(512)
	case 1: // up to 64 KiB
		n = 1 + rng.Int64N(64*kib)
	case 2: // straddles a 64 KiB boundary
		n = 1 + rng.Int64N(8*kib)
	case 3: // large
		n = 64*kib + rng.Int64N(448*kib)
	default: // sector-aligned
		n = (1 + rng.Int64N(32)) * 512
	}
	n = min(n, size)
	switch rng.IntN(6) {
	case 0:
		off = size - n // touches the end
	case 1:
		b := rng.Int64N(size/(64*kib)+1) * 64 * kib
		off = max(0, min(b-n/2, size-n))
	case 2:
		off = rng.Int64N(size/512) * 512
		off = min(off, size-n)
	default:
		off = rng.Int64N(size - n + 1)
	}
	p = make([]byte, n)
	if rng.IntN(8) != 0 {
		for i := range p {
			p[i] = byte(rng.UintN(256))
		}
		// Make the first and last byte differ from zero, so a write
		// is always visible at both ends.
		p[0] |= 1
		p[n-1] |= 1
	}
	return off, p
}

// withCancelled returns a context that is already cancelled.
func withCancelled(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	return ctx
}
