package pipeline

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmbackup/vmbackup/hypervisor"
)

type ext = hypervisor.Extent

func TestTouched(t *testing.T) {
	const cs = 100
	tests := []struct {
		name string
		exts []ext
		size int64
		want []Span
	}{
		{"none", nil, 1000, nil},
		{"inside one slot", []ext{{Offset: 10, Length: 5}}, 1000, []Span{{0, 1}}},
		{"exactly one slot", []ext{{Offset: 100, Length: 100}}, 1000, []Span{{1, 2}}},
		{"crossing a boundary", []ext{{Offset: 199, Length: 2}}, 1000, []Span{{1, 3}}},
		{"adjacent slots merge", []ext{{Offset: 0, Length: 50}, {Offset: 150, Length: 10}}, 1000, []Span{{0, 2}}},
		{"same slot twice", []ext{{Offset: 0, Length: 10}, {Offset: 20, Length: 10}}, 1000, []Span{{0, 1}}},
		{"gap", []ext{{Offset: 0, Length: 10}, {Offset: 500, Length: 10}}, 1000, []Span{{0, 1}, {5, 6}}},
		{"short last slot", []ext{{Offset: 990, Length: 5}}, 995, []Span{{9, 10}}},
		{"beyond size ignored", []ext{{Offset: 990, Length: 50}, {Offset: 2000, Length: 1}}, 1000, []Span{{9, 10}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Touched(tt.exts, tt.size, cs)); diff != "" {
				t.Errorf("Touched (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWithin(t *testing.T) {
	alloc := []ext{{Offset: 0, Length: 10}, {Offset: 10, Length: 10}, {Offset: 50, Length: 100}, {Offset: 300, Length: 5}}
	tests := []struct {
		name     string
		exts     []ext
		off, end int64
		want     []ext
	}{
		{"nil means all", nil, 100, 200, []ext{{Offset: 100, Length: 100}}},
		{"adjacent extents merge", alloc, 0, 100, []ext{{Offset: 0, Length: 20}, {Offset: 50, Length: 50}}},
		{"clipped at both ends", alloc, 60, 70, []ext{{Offset: 60, Length: 10}}},
		{"hole", alloc, 200, 300, nil},
		{"after all", alloc, 400, 500, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Within(nil, tt.exts, tt.off, tt.end)); diff != "" {
				t.Errorf("Within (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCursorHandsOutEachSlotOnce(t *testing.T) {
	spans := []Span{{0, 3}, {10, 12}, {20, 21}}
	c := NewCursor(spans)
	var mu sync.Mutex
	var got []int
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i, ok := c.Next()
				if !ok {
					return
				}
				mu.Lock()
				got = append(got, i)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	seen := map[int]int{}
	for _, i := range got {
		seen[i]++
	}
	want := map[int]int{0: 1, 1: 1, 2: 1, 10: 1, 11: 1, 20: 1}
	if diff := cmp.Diff(want, seen); diff != "" {
		t.Errorf("slots handed out (-want +got):\n%s", diff)
	}
	if Count(spans) != 6 {
		t.Errorf("Count = %d, want 6", Count(spans))
	}
}

func TestPoolBoundsBuffers(t *testing.T) {
	p := NewPool(1024, 2)
	ctx := context.Background()
	a, _ := p.Get(ctx)
	b, _ := p.Get(ctx)
	if len(a) != 1024 || len(b) != 1024 {
		t.Fatalf("buffers of %d and %d bytes, want 1024", len(a), len(b))
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.Get(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("third Get with a cancelled context = %v, want context.Canceled", err)
	}
	p.Put(a)
	c, err := p.Get(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if &c[0] != &a[0] {
		t.Error("Get after Put did not reuse the returned buffer")
	}
}

func TestIsZero(t *testing.T) {
	p := make([]byte, 3<<20+5)
	if !IsZero(p) {
		t.Fatal("zeros not zero")
	}
	for _, i := range []int{0, 1 << 20, len(p) - 1} {
		p[i] = 1
		if IsZero(p) {
			t.Fatalf("byte %d set but IsZero", i)
		}
		p[i] = 0
	}
}

type eofReader struct{ size int64 }

func (r eofReader) ReadAt(p []byte, off int64) (int, error) {
	if off >= r.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), r.size-off)
	if off+n == r.size {
		return int(n), io.EOF
	}
	return int(n), nil
}

func TestReadFull(t *testing.T) {
	r := eofReader{size: 100}
	if err := ReadFull(r, make([]byte, 10), 90); err != nil {
		t.Errorf("read ending at size: %v, want nil", err)
	}
	if err := ReadFull(r, make([]byte, 10), 95); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("read crossing size: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestMeterReportsAboutEveryPercentAndTheEnd(t *testing.T) {
	var calls atomic.Int64
	var last atomic.Int64
	m := NewMeter(10000, func(done, total int64) {
		calls.Add(1)
		last.Store(done)
	})
	for range 10000 {
		m.Add(1)
	}
	if n := calls.Load(); n < 90 || n > 101 {
		t.Errorf("%d reports for 10000 adds, want about 100", n)
	}
	if last.Load() != 10000 {
		t.Errorf("last report at %d, want 10000", last.Load())
	}
}
