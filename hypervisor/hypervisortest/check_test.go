package hypervisortest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
)

func TestUncovered(t *testing.T) {
	for _, tc := range []struct {
		name       string
		want, have []span
		missing    []span
	}{
		{"all covered", []span{{0, 10}}, []span{{0, 10}}, nil},
		{"nothing covered", []span{{0, 10}}, nil, []span{{0, 10}}},
		{"hole in the middle", []span{{0, 10}}, []span{{0, 3}, {5, 10}}, []span{{3, 5}}},
		{"both ends", []span{{0, 10}}, []span{{2, 8}}, []span{{0, 2}, {8, 10}}},
		{"several wants", []span{{0, 2}, {4, 6}, {8, 10}}, []span{{1, 5}}, []span{{0, 1}, {5, 6}, {8, 10}}},
		{"cover spans wants", []span{{2, 3}, {5, 7}}, []span{{0, 100}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := uncovered(tc.want, tc.have)
			if diff := cmp.Diff(tc.missing, got, cmp.AllowUnexported(span{})); diff != "" {
				t.Errorf("uncovered(%v, %v) (-want +got):\n%s", tc.want, tc.have, diff)
			}
		})
	}
}

func TestDiffAndExpand(t *testing.T) {
	a := make([]byte, 10000)
	b := make([]byte, 10000)
	b[3], b[4], b[9000] = 1, 1, 1
	got := diffSpans(a, b)
	want := []span{{3, 5}, {9000, 9001}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(span{})); diff != "" {
		t.Errorf("diffSpans (-want +got):\n%s", diff)
	}
	gotE := expand(want, 4096)
	wantE := []span{{0, 4096}, {8192, 12288}}
	if diff := cmp.Diff(wantE, gotE, cmp.AllowUnexported(span{})); diff != "" {
		t.Errorf("expand (-want +got):\n%s", diff)
	}
}

func TestCheckExtentsRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		ext  []hypervisor.Extent
		ok   bool
	}{
		{"valid", []hypervisor.Extent{{Offset: 0, Length: 10}, {Offset: 10, Length: 5}, {Offset: 20, Length: 80}}, true},
		{"empty extent", []hypervisor.Extent{{Offset: 0, Length: 0}}, false},
		{"overlap", []hypervisor.Extent{{Offset: 0, Length: 10}, {Offset: 5, Length: 10}}, false},
		{"unsorted", []hypervisor.Extent{{Offset: 50, Length: 10}, {Offset: 0, Length: 10}}, false},
		{"past the end", []hypervisor.Extent{{Offset: 90, Length: 11}}, false},
		{"negative", []hypervisor.Extent{{Offset: -1, Length: 5}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := validExtents(tc.ext, 100) == nil
			if got != tc.ok {
				t.Errorf("validExtents(%v, 100) ok = %v, want %v", tc.ext, got, tc.ok)
			}
		})
	}
}
