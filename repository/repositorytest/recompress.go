package repositorytest

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/vmbackup/vmbackup/repository"
)

// testRecompress stores one point with s2 and one with the repository's
// zstd, then recompresses: a dry run changes nothing, a run limited to the
// s2 point rewrites exactly its compressed chunks into zstd, smaller, and
// leaves raw chunks and the other point alone; everything reads back and
// verifies; a second run finds nothing to do.
func testRecompress(t *testing.T, mk MakeBucket) {
	ctx := context.Background()
	const cs = 64 << 10
	b := mk(t)
	r := initRepo(t, b, cs, nil)
	// Disk a: 3 compressible chunks (s2), 2 random (stored raw).
	a := append(makeDisk(compressible, 3*cs, 11), makeDisk(random, 2*cs, 12)...)
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetCodec("s2"); err != nil {
		t.Fatal(err)
	}
	x, st := backup(t, r, w, nil, a)
	ma := &repository.Manifest{VMID: "a", Kind: "full", Consistency: "crash", Disks: []repository.DiskRecord{{ID: "d", Size: int64(len(a)), Stats: st}}}
	if err := w.Commit(ctx, ma, map[string]*repository.Index{"d": x}); err != nil {
		t.Fatal(err)
	}
	mb := commitPoint(t, r, "b", nil, map[string][]byte{"d": makeDisk(compressible, 2*cs, 13)})

	tags := func() map[string]byte {
		out := map[string]byte{}
		for _, k := range listKeys(t, b, "chunks/") {
			data, err := b.ReadAll(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			out[k] = data[0]
		}
		return out
	}
	count := func(m map[string]byte, tag byte) (n int) {
		for _, v := range m {
			if v == tag {
				n++
			}
		}
		return n
	}
	before := tags()
	if count(before, 2) != 3 || count(before, 0) != 2 || count(before, 1) != 2 {
		t.Fatalf("chunk tags before %v: want 3 s2, 2 raw, 2 zstd", before)
	}

	dry, err := r.Recompress(ctx, &repository.RecompressOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if dry.Chunks != 7 || dry.Candidates != 3 || dry.Rewritten != 3 || dry.BytesAfter >= dry.BytesBefore {
		t.Errorf("dry run: %+v, want 7 chunks, 3 candidates rewritten smaller", dry)
	}
	if after := tags(); count(after, 2) != 3 {
		t.Errorf("a dry run changed chunks: %v", after)
	}

	// A point that shares every chunk with an excluded one has nothing new.
	mc := commitPoint(t, r, "c", nil, map[string][]byte{"d": a[:3*cs]})
	if none, err := r.Recompress(ctx, &repository.RecompressOptions{Points: []string{mc.ID}, Exclude: []string{ma.ID}, DryRun: true}); err != nil || none.Chunks != 0 {
		t.Errorf("recompress of a point excluding one with all its chunks: %+v, %v; want no chunk looked at", none, err)
	}
	rep, err := r.Recompress(ctx, &repository.RecompressOptions{Points: []string{ma.ID}, Exclude: []string{mb.ID}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Chunks != 5 || rep.Candidates != 3 || rep.Rewritten != 3 || rep.BytesBefore != dry.BytesBefore || rep.BytesAfter != dry.BytesAfter {
		t.Errorf("recompress point a: %+v, want its 5 chunks looked at and the 3 s2 ones rewritten as the dry run said (%+v)", rep, dry)
	}
	if after := tags(); count(after, 2) != 0 || count(after, 0) != 2 || count(after, 1) != 5 {
		t.Errorf("chunk tags after %v: want 5 zstd, 2 raw", after)
	}
	for _, m := range []*repository.Manifest{ma, mb} {
		want := a
		if m == mb {
			want = makeDisk(compressible, 2*cs, 13)
		}
		got, err := readDisk(ctx, r, m, "d")
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("point %s after recompress: err %v, equal %v", m.VMID, err, bytes.Equal(got, want))
		}
	}
	if vr, err := r.Verify(ctx, &repository.VerifyOptions{Full: true}); err != nil || len(vr.Problems) != 0 {
		t.Errorf("verify after recompress: %v %+v", err, vr)
	}
	if again, err := r.Recompress(ctx, nil); err != nil || again.Candidates != 0 || again.Rewritten != 0 {
		t.Errorf("second recompress: %+v, %v; want nothing to do", again, err)
	}
	if _, err := r.Recompress(ctx, &repository.RecompressOptions{Codec: "lz4"}); err == nil || !strings.Contains(err.Error(), `"lz4"`) {
		t.Errorf("Recompress(codec lz4) = %v, want an error naming the codec", err)
	}
}
