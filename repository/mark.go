package repository

import (
	"context"
	"sync"

	"golang.org/x/sync/errgroup"
)

// refs is everything a set of restore points references.
type refs struct {
	roots  idSet // index roots
	pages  idSet // index pages
	chunks idSet // data chunks (never ZeroChunk)
	// sizes is, per distinct chunk, the plaintext length of a slot it
	// fills: filled only when collectRefs is asked for sizes.
	sizes map[ChunkID]int
	// With sizes, also the decoded roots by key and, per page, how many of
	// its slots are not zero and whether its last slot is.
	rootByKey map[string]*indexRoot
	pageInfo  map[ChunkID]pageInfo
}

type pageInfo struct {
	nonZero     int
	lastNonZero bool
}

// collectRefs reads the indexes of every disk of ms (each distinct root and
// page once) and gathers the ids they reference. A root or page that cannot
// be read is passed to bad with the point and disk that reference it (the
// first found) and collection goes on; bad may be nil only if the caller
// treats any such problem as fatal: then the first one is returned.
func (r *Repository) collectRefs(ctx context.Context, ms []*Manifest, bad func(p Problem), withSizes bool) (*refs, error) {
	type diskRef struct {
		point, disk string
		key         string
	}
	var rootsTodo []diskRef
	seenRoot := map[string]bool{}
	out := &refs{}
	if withSizes {
		out.sizes = map[ChunkID]int{}
		out.rootByKey = map[string]*indexRoot{}
		out.pageInfo = map[ChunkID]pageInfo{}
	}
	for _, m := range ms {
		for _, d := range m.Disks {
			if seenRoot[d.Index] {
				continue
			}
			seenRoot[d.Index] = true
			rootsTodo = append(rootsTodo, diskRef{m.ID, d.ID, d.Index})
		}
	}
	var mu sync.Mutex
	report := func(p Problem) error {
		if bad == nil {
			return p.Err
		}
		mu.Lock()
		bad(p)
		mu.Unlock()
		return nil
	}
	type pageRef struct {
		diskRef
		pid       ChunkID
		k         int
		slots     int
		chunkSize int
		size      int64
	}
	var pagesTodo []pageRef
	seenPage := map[ChunkID]bool{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for _, dr := range rootsTodo {
		g.Go(func() error {
			id, err := parseRootKey(dr.key)
			if err == nil {
				mu.Lock()
				out.roots.add(id)
				mu.Unlock()
			}
			rt, err := r.readRoot(gctx, dr.key)
			if err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				return report(Problem{PointID: dr.point, DiskID: dr.disk, Offset: -1, Key: dr.key, Err: err})
			}
			nslots := int((rt.size + int64(rt.chunkSize) - 1) / int64(rt.chunkSize))
			mu.Lock()
			defer mu.Unlock()
			if out.rootByKey != nil {
				out.rootByKey[dr.key] = rt
			}
			for k, pid := range rt.pages {
				out.pages.add(pid)
				if seenPage[pid] {
					continue
				}
				seenPage[pid] = true
				pagesTodo = append(pagesTodo, pageRef{dr, pid, k, min(PageSlots, nslots-k*PageSlots), rt.chunkSize, rt.size})
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for _, pr := range pagesTodo {
		g.Go(func() error {
			ids := make([]ChunkID, pr.slots)
			pid := pr.pid
			if err := r.readPage(gctx, pr.key, pr.k, pid, ids); err != nil {
				if gctx.Err() != nil {
					return gctx.Err()
				}
				return report(Problem{PointID: pr.point, DiskID: pr.disk, Offset: int64(pr.k) * PageSlots * int64(pr.chunkSize), Key: pageKey(pid), Err: err})
			}
			mu.Lock()
			defer mu.Unlock()
			if out.pageInfo != nil {
				var pi pageInfo
				for _, id := range ids {
					if !id.IsZero() {
						pi.nonZero++
					}
				}
				pi.lastNonZero = !ids[len(ids)-1].IsZero()
				out.pageInfo[pid] = pi
			}
			for i, id := range ids {
				if id.IsZero() {
					continue
				}
				out.chunks.add(id)
				if out.sizes != nil {
					off := (int64(pr.k)*PageSlots + int64(i)) * int64(pr.chunkSize)
					out.sizes[id] = int(min(int64(pr.chunkSize), pr.size-off))
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out.roots.compact()
	out.pages.compact()
	out.chunks.compact()
	return out, nil
}
