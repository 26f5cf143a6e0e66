package repository_test

import (
	"context"
	"fmt"
	"testing"

	_ "gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/repository"
)

// TestWriterSeedsDedupFromEveryPage: a writer knows every chunk its base
// references, in every index page (the base's index spans three pages, the
// last one short), and trusts them without asking the bucket: a chunk
// deleted behind its back is not uploaded again, while a chunk the base
// does not reference is.
func TestWriterSeedsDedupFromEveryPage(t *testing.T) {
	ctx := context.Background()
	const cs = 64 << 10
	repo, err := repository.Init(ctx, "mem://", &repository.InitOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	slots := []int{0, repository.PageSlots - 1, repository.PageSlots, 2 * repository.PageSlots, 2*repository.PageSlots + 99}
	size := int64(2*repository.PageSlots+100) * cs
	chunk := func(i int) []byte { return []byte(fmt.Sprintf("chunk in slot %d", i)) }

	pw, err := repo.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	idx := repository.NewIndex(size, cs)
	for _, i := range slots {
		id := repo.HashChunk(chunk(i))
		if _, err := pw.PutChunk(ctx, id, chunk(i)); err != nil {
			t.Fatal(err)
		}
		idx.Set(i, id)
	}
	base := &repository.Manifest{VMID: "vm-1", Kind: "full", Consistency: "crash", Disks: []repository.DiskRecord{{ID: "disk-1", Size: size}}}
	if err := pw.Commit(ctx, base, map[string]*repository.Index{"disk-1": idx}); err != nil {
		t.Fatal(err)
	}
	for _, i := range slots {
		if err := repo.Bucket().Delete(ctx, repository.ChunkKey(repo.HashChunk(chunk(i)))); err != nil {
			t.Fatal(err)
		}
	}

	pw, err = repo.NewPointWriter(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Abort(ctx)
	for _, i := range slots {
		res, err := pw.PutChunk(ctx, repo.HashChunk(chunk(i)), chunk(i))
		if err != nil {
			t.Fatal(err)
		}
		if res.New {
			t.Errorf("chunk of slot %d (page %d) uploaded again: the writer did not know it from its base", i, i/repository.PageSlots)
		}
	}
	other := []byte("not in the base")
	if res, err := pw.PutChunk(ctx, repo.HashChunk(other), other); err != nil || !res.New {
		t.Errorf("a chunk the base does not reference: New %v, err %v; want it uploaded", res.New, err)
	}
}
