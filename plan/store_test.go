package plan

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gocloud.dev/blob"
	"gocloud.dev/blob/fileblob"
	"gocloud.dev/blob/memblob"
)

// nums lists the stored version numbers of a plan.
func nums(t *testing.T, s *BlobStore, id string) []int64 {
	t.Helper()
	vs, err := s.versions(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, v := range vs {
		out = append(out, v.n)
	}
	return out
}

func newPlan(id string) Plan {
	p := valid()
	p.ID, p.Version = id, 0
	return p
}

// opener makes one "process" on a shared store location: a bucket
// handle of its own and the options that go with it.
type opener func(t *testing.T) (*blob.Bucket, *BlobStoreOptions)

// locations returns, for each kind of bucket, a function that opens a new
// handle on one shared location (mem shares one handle: it has no other).
func locations(t *testing.T) map[string]opener {
	mem := memblob.OpenBucket(nil)
	t.Cleanup(func() { mem.Close() })
	s3 := s3Bucket(t)
	dir := t.TempDir()
	file := func(link bool) opener {
		return func(t *testing.T) (*blob.Bucket, *BlobStoreOptions) {
			b, err := fileblob.OpenBucket(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			o := &BlobStoreOptions{}
			if link {
				o.LocalDir = dir
			}
			return b, o
		}
	}
	return map[string]opener{
		"mem":       func(*testing.T) (*blob.Bucket, *BlobStoreOptions) { return mem, &BlobStoreOptions{} },
		"s3":        func(*testing.T) (*blob.Bucket, *BlobStoreOptions) { return s3, &BlobStoreOptions{} },
		"file":      file(false),
		"file link": file(true),
	}
}

// buckets runs f on a store in each kind of bucket.
func buckets(t *testing.T, f func(t *testing.T, s *BlobStore)) {
	for _, name := range []string{"mem", "s3", "file", "file link"} {
		t.Run(name, func(t *testing.T) {
			b, o := locations(t)[name](t)
			f(t, NewBlobStore(b, o))
		})
	}
}

func TestStoreCRUD(t *testing.T) {
	buckets(t, func(t *testing.T, s *BlobStore) {
		ctx := context.Background()
		if _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of a missing plan: %v", err)
		}
		a, err := s.Put(ctx, newPlan("a"))
		if err != nil {
			t.Fatal(err)
		}
		if a.Version != 1 {
			t.Errorf("created at version %d", a.Version)
		}
		if _, err := s.Put(ctx, newPlan("a")); !errors.Is(err, ErrConflict) {
			t.Errorf("second create: %v, want ErrConflict", err)
		}
		got, err := s.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(a, got); diff != "" {
			t.Errorf("Get (-put +got):\n%s", diff)
		}
		got.Description = "changed"
		a2, err := s.Put(ctx, got)
		if err != nil || a2.Version != 2 {
			t.Fatalf("update: %v, version %d", err, a2.Version)
		}
		stale := got // still at version 1
		stale.Name = "lost update"
		if _, err := s.Put(ctx, stale); !errors.Is(err, ErrConflict) {
			t.Errorf("stale update: %v, want ErrConflict", err)
		}
		if _, err := s.Put(ctx, newPlan("b")); err != nil {
			t.Fatal(err)
		}
		list, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]Plan{a2, func() Plan { p := newPlan("b"); p.Version = 1; return p }()}, list); diff != "" {
			t.Errorf("List (-want +got):\n%s", diff)
		}
		if err := s.Delete(ctx, "a", 1); !errors.Is(err, ErrConflict) {
			t.Errorf("Delete at a stale version: %v", err)
		}
		if err := s.Delete(ctx, "a", 2); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get(ctx, "a"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete: %v", err)
		}
		if err := s.Delete(ctx, "a", 0); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Delete: %v", err)
		}
		if _, err := s.Put(ctx, a2); !errors.Is(err, ErrNotFound) {
			t.Errorf("update of a deleted plan: %v", err)
		}
		again, err := s.Put(ctx, newPlan("a"))
		if err != nil || again.Version != 4 {
			t.Errorf("re-create: %v, version %d (want 4: after the tombstone)", err, again.Version)
		}
		if err := s.Delete(ctx, "b", 0); err != nil {
			t.Fatal(err)
		}
		list, _ = s.List(ctx)
		if len(list) != 1 || list[0].ID != "a" {
			t.Errorf("List after deleting b: %v", list)
		}
		bad := newPlan("c")
		bad.Objects = Objects{}
		if _, err := s.Put(ctx, bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Put of an invalid plan: %v", err)
		}
		if _, err := s.Get(ctx, "../x"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get of a bad id: %v", err)
		}
	})
}

// TestStoreRace has two writers update the same version at once, many
// times: exactly one wins each round and its change is the one stored.
// Two BlobStores, each on its own bucket handle, are two processes: only
// the conditional create keeps them apart. fileblob's IfNotExist is not
// atomic between handles (see BlobStore), so plain file is raced through
// one store only; "file link" (LocalDir) is raced between two.
func TestStoreRace(t *testing.T) {
	for _, tt := range []struct {
		location string
		oneStore bool
	}{
		{"mem", false},
		{"mem", true},
		{"s3", false},
		{"file", true},
		{"file link", false},
	} {
		name := tt.location + map[bool]string{true: " one store", false: " two processes"}[tt.oneStore]
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			open := locations(t)[tt.location]
			var stores []*BlobStore
			for range 2 {
				b, o := open(t)
				o.KeepVersions = 2
				stores = append(stores, NewBlobStore(b, o))
			}
			if tt.oneStore {
				stores[1] = stores[0]
			}
			cur, err := stores[0].Put(ctx, newPlan("p"))
			if err != nil {
				t.Fatal(err)
			}
			for round := 0; round < 20; round++ {
				var wg sync.WaitGroup
				results := make([]error, 2)
				stored := make([]Plan, 2)
				for w := range 2 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						p := cur
						p.Description = fmt.Sprintf("round %d writer %d", round, w)
						stored[w], results[w] = stores[w].Put(ctx, p)
					}()
				}
				wg.Wait()
				winners := 0
				for w, err := range results {
					switch {
					case err == nil:
						winners++
						cur = stored[w]
					case !errors.Is(err, ErrConflict):
						t.Fatalf("round %d: writer %d: %v", round, w, err)
					}
				}
				if winners != 1 {
					t.Fatalf("round %d: %d winners (%v)", round, winners, results)
				}
				got, err := stores[0].Get(ctx, "p")
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(cur, got); diff != "" {
					t.Fatalf("round %d: stored plan is not the winner's (-winner +got):\n%s", round, diff)
				}
			}
		})
	}
}

// TestStoreIncrements runs read-modify-write loops that retry on
// conflict, each through its own BlobStore (as separate processes would):
// no increment is lost, even with pruning at 2 versions.
func TestStoreIncrements(t *testing.T) {
	ctx := context.Background()
	bucket := memblob.OpenBucket(nil)
	s := NewBlobStore(bucket, &BlobStoreOptions{KeepVersions: 2})
	p := newPlan("counter")
	p.Description = "0"
	if _, err := s.Put(ctx, p); err != nil {
		t.Fatal(err)
	}
	const writers, each = 4, 10
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := NewBlobStore(bucket, &BlobStoreOptions{KeepVersions: 2})
			for i := 0; i < each; {
				cur, err := s.Get(ctx, "counter")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(cur.Description)
				cur.Description = strconv.Itoa(n + 1)
				if _, err := s.Put(ctx, cur); errors.Is(err, ErrConflict) {
					continue
				} else if err != nil {
					t.Error(err)
					return
				}
				i++
			}
		}()
	}
	wg.Wait()
	got, err := s.Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if got.Description != strconv.Itoa(writers*each) || got.Version != writers*each+1 {
		t.Errorf("counter %s at version %d, want %d at %d", got.Description, got.Version, writers*each, writers*each+1)
	}
	// Every version is younger than PruneAfter, so none was pruned.
	if vs := nums(t, s, "counter"); len(vs) != writers*each+1 {
		t.Errorf("%d versions kept, want all %d (within PruneAfter)", len(vs), writers*each+1)
	}
}

// TestStoreStaleAfterPrune is the case IfNotExist alone cannot catch: a
// writer based on version 1 writes version 2 after it was pruned. The
// write must be refused and withdrawn.
func TestStoreStaleAfterPrune(t *testing.T) {
	ctx := context.Background()
	s := NewBlobStore(memblob.OpenBucket(nil), &BlobStoreOptions{KeepVersions: 2, PruneAfter: time.Nanosecond})
	old, err := s.Put(ctx, newPlan("p"))
	if err != nil {
		t.Fatal(err)
	}
	cur := old
	for i := 0; i < 4; i++ {
		cur.Description = strconv.Itoa(i)
		if cur, err = s.Put(ctx, cur); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]int64{4, 5}, nums(t, s, "p")); diff != "" {
		t.Fatalf("versions (-want +got):\n%s", diff)
	}
	// Bypass the early version check, as a writer that read version 1
	// just before the others wrote would.
	stale := old
	stale.Name = "stale"
	r := record{Plan: &stale}
	if _, err := s.commit(ctx, "p", 2, r); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale write: %v, want ErrConflict", err)
	}
	if diff := cmp.Diff([]int64{4, 5}, nums(t, s, "p")); diff != "" {
		t.Errorf("stale version not withdrawn (-want +got):\n%s", diff)
	}
	got, _ := s.Get(ctx, "p")
	if got.Name == "stale" || got.Version != 5 {
		t.Errorf("current plan %q at %d", got.Name, got.Version)
	}
}
