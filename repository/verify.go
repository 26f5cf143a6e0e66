package repository

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Error returns a one-line description naming what is broken and where.
func (p Problem) Error() string {
	var b strings.Builder
	if p.PointID != "" {
		fmt.Fprintf(&b, "point %s ", p.PointID)
	}
	if p.DiskID != "" {
		fmt.Fprintf(&b, "disk %s ", p.DiskID)
	}
	if p.Offset >= 0 {
		fmt.Fprintf(&b, "offset %d ", p.Offset)
	}
	if !p.Chunk.IsZero() {
		fmt.Fprintf(&b, "chunk %s ", p.Chunk)
	}
	if p.Key != "" {
		fmt.Fprintf(&b, "(%s) ", p.Key)
	}
	fmt.Fprintf(&b, ": %v", p.Err)
	return b.String()
}

func (r *Repository) verify(ctx context.Context, o *VerifyOptions) (*VerifyReport, error) {
	var opts VerifyOptions
	if o != nil {
		opts = *o
	}
	rep := &VerifyReport{}
	var mu sync.Mutex
	bad := func(p Problem) {
		mu.Lock()
		rep.Problems = append(rep.Problems, p)
		mu.Unlock()
	}
	ms, err := r.listManifests(ctx, true, func(key string, err error) {
		rep.Points++
		bad(Problem{PointID: strings.TrimPrefix(key, pointPrefix), Offset: -1, Key: key, Err: err})
	})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rep.Points += len(ms)
	refs, err := r.collectRefs(ctx, ms, bad, false)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rep.Chunks = refs.chunks.len()

	// Check each distinct chunk once.
	broken := map[ChunkID]error{}
	if opts.Full {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.opts.Concurrency)
		for _, id := range refs.chunks.ids {
			g.Go(func() error {
				buf := r.getBuf()
				_, err := r.readChunk(gctx, id, (*buf)[:0])
				r.encPool.Put(buf)
				if err == nil {
					return nil
				}
				if gctx.Err() != nil {
					return gctx.Err()
				}
				if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotFound) {
					return err
				}
				mu.Lock()
				broken[id] = err
				mu.Unlock()
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	} else {
		var stored idSet
		if err := r.list(ctx, chunkPrefix, func(o *blobListObject) error {
			if id, ok := idFromFanoutKey(chunkPrefix, o.Key); ok {
				stored.add(id)
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		stored.compact()
		for _, id := range refs.chunks.ids {
			if !stored.has(id) {
				broken[id] = fmt.Errorf("%s: %w", ChunkKey(id), ErrNotFound)
			}
		}
	}
	if len(broken) == 0 {
		return rep, nil
	}
	// Locate every broken chunk: each disk of each point that references it,
	// at the first offset.
	for _, m := range ms {
		for _, d := range m.Disks {
			x, err := r.readIndex(ctx, d.Index, nil)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				continue // reported while collecting
			}
			seen := map[ChunkID]bool{}
			for i, id := range x.nonZero() {
				err, isBad := broken[id]
				if !isBad || seen[id] {
					continue
				}
				seen[id] = true
				bad(Problem{PointID: m.ID, DiskID: d.ID, Offset: int64(i) * int64(x.chunkSize), Chunk: id, Key: ChunkKey(id), Err: err})
			}
		}
	}
	return rep, nil
}
