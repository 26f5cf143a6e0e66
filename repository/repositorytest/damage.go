package repositorytest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"gocloud.dev/blob"

	"github.com/vmbackup/vmbackup/repository"
)

// flip changes one byte of an object in the bucket, in the middle.
func flip(t *testing.T, b *blob.Bucket, key string) {
	t.Helper()
	ctx := context.Background()
	data, err := b.ReadAll(ctx, key)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	data[len(data)/2] ^= 0x20
	if err := b.WriteAll(ctx, key, data, nil); err != nil {
		t.Fatalf("write %s: %v", key, err)
	}
}

// damageCase makes a fresh repository with one point, damages it, and
// returns what should be named in errors.
type damageCase struct {
	name string
	// damage breaks the point and returns the key it broke.
	damage func(t *testing.T, b *blob.Bucket, r *repository.Repository, m *repository.Manifest) string
	want   error
}

// slotOf returns the first slot of disk "d" that holds chunk key.
func slotOf(t *testing.T, r *repository.Repository, m *repository.Manifest, key string) int {
	t.Helper()
	x, err := r.ReadIndex(context.Background(), m.Disks[0].Index)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < x.Len(); i++ {
		if repository.ChunkKey(x.Get(i)) == key {
			return i
		}
	}
	t.Fatalf("no slot holds %s", key)
	return -1
}

func testCorruption(t *testing.T, mk MakeBucket) { testDamage(t, mk, true) }
func testMissing(t *testing.T, mk MakeBucket)    { testDamage(t, mk, false) }

func testDamage(t *testing.T, mk MakeBucket, corrupt bool) {
	ctx := context.Background()
	const cs = 64 << 10
	data := append(makeDisk(random, 3*cs, 11), makeDisk(compressible, 2*cs+100, 12)...)
	break_ := func(b *blob.Bucket, key string) {
		if corrupt {
			flip(t, b, key)
		} else if err := b.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	want := repository.ErrNotFound
	if corrupt {
		want = repository.ErrCorrupt
	}
	for _, kind := range []string{"chunk", "page", "index root", "manifest"} {
		t.Run(kind, func(t *testing.T) {
			b := mk(t)
			r := initRepo(t, b, cs, nil)
			m := commitPoint(t, r, "vm", nil, map[string][]byte{"d": data})
			other := commitPoint(t, r, "vm2", nil, map[string][]byte{"d": makeDisk(random, cs, 99)})
			var key string
			switch kind {
			case "chunk":
				key = repository.ChunkKey(r.HashChunk(data[3*cs : 4*cs])) // a compressible one
			case "page":
				// Both points have one page; break the one of m.
				for _, k := range listKeys(t, b, "pages/") {
					if !pageOf(t, r, other, k) {
						key = k
					}
				}
			case "index root":
				key = m.Disks[0].Index
			case "manifest":
				key = "points/" + m.ID
			}
			break_(b, key)

			// A read names what is broken.
			_, err := readDisk(ctx, r, m, "d")
			if kind == "manifest" {
				_, err = r.Point(ctx, m.ID)
			}
			if !errors.Is(err, want) {
				t.Fatalf("read after damaging %s = %v, want %v", key, err, want)
			}
			if !strings.Contains(err.Error(), key[strings.LastIndexByte(key, '/')+1:]) {
				t.Errorf("read error %q does not name %s", err, key)
			}
			if kind == "chunk" {
				off := int64(slotOf(t, r, m, key)) * cs
				for _, s := range []string{"point " + m.ID, "disk d", fmt.Sprint("offset ", off)} {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("read error %q does not name %q", err, s)
					}
				}
			}
			// The other point is unaffected.
			if got, err := readDisk(ctx, r, other, "d"); err != nil || len(got) != cs {
				t.Errorf("other point after damage: %v", err)
			}

			// Verify, fast and full, reports it (a missing manifest is a
			// deleted point: nothing to report).
			for _, full := range []bool{false, true} {
				if kind == "manifest" && !corrupt {
					break
				}
				if kind == "chunk" && corrupt && !full {
					continue // a fast verify only checks existence
				}
				rep, err := r.Verify(ctx, &repository.VerifyOptions{Full: full})
				if err != nil {
					t.Fatalf("Verify(full=%v): %v", full, err)
				}
				if len(rep.Problems) != 1 {
					t.Fatalf("Verify(full=%v) found %d problems, want 1: %v", full, len(rep.Problems), rep.Problems)
				}
				p := rep.Problems[0]
				if p.Key != key || p.PointID != m.ID || !errors.Is(p.Err, want) {
					t.Errorf("Verify(full=%v) problem = %v; want key %s, point %s, %v", full, p, key, m.ID, want)
				}
				if kind == "chunk" && (p.DiskID != "d" || p.Offset != int64(slotOf(t, r, m, key))*cs || repository.ChunkKey(p.Chunk) != key) {
					t.Errorf("Verify(full=%v) problem = %v; want disk d, the chunk's offset and id", full, p)
				}
				if rep.Points != 2 {
					t.Errorf("Verify(full=%v).Points = %d, want 2", full, rep.Points)
				}
			}
		})
	}
	// Every chunk of a point broken at once: verify reports each, not just
	// the first.
	t.Run("all chunks", func(t *testing.T) {
		b := mk(t)
		r := initRepo(t, b, cs, nil)
		m := commitPoint(t, r, "vm", nil, map[string][]byte{"d": data})
		keys := listKeys(t, b, "chunks/")
		for _, k := range keys {
			break_(b, k)
		}
		rep, err := r.Verify(ctx, &repository.VerifyOptions{Full: true})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, p := range rep.Problems {
			if p.PointID != m.ID || !errors.Is(p.Err, want) {
				t.Errorf("problem %v: want point %s and %v", p, m.ID, want)
			}
			got = append(got, p.Key)
		}
		if len(got) != len(keys) {
			t.Errorf("Verify reported %d problems for %d broken chunks: %v", len(got), len(keys), rep.Problems)
		}
	})
}

// pageOf reports whether pageKey is the (only) index page of m's disk: a
// page's id is the hash of the slot ids it holds.
func pageOf(t *testing.T, r *repository.Repository, m *repository.Manifest, pageKey string) bool {
	t.Helper()
	x, err := r.ReadIndex(context.Background(), m.Disks[0].Index)
	if err != nil {
		t.Fatal(err)
	}
	var ids []byte
	for i := 0; i < x.Len(); i++ {
		id := x.Get(i)
		ids = append(ids, id[:]...)
	}
	return strings.HasSuffix(pageKey, "/"+r.HashChunk(ids).String())
}
