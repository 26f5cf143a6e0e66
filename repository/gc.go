package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// ErrLocked is wrapped by GC when another garbage collection holds the
// repository's GC lock.
var ErrLocked = errors.New("repository: locked by another garbage collection")

const (
	gcLockKey = "gc/lock"
	gcLastKey = "gc/last"
)

// probe records an id the writer found in the bucket and will reference.
func (w *PointWriter) probe(id ChunkID) {
	w.probedMu.Lock()
	w.probed = append(w.probed, id)
	w.probedMu.Unlock()
}

// checkGC is the writer's half of the GC protocol (see the package doc),
// run after the indexes are written and before the manifest: publish the
// probed ids, then, if a GC ran or runs during this writer's life, wait for
// it to end and make sure nothing this point references was removed.
func (w *PointWriter) checkGC(ctx context.Context, m *Manifest, indexes map[string]*Index) error {
	r := w.r
	w.probedMu.Lock()
	probed := idSet{ids: w.probed}
	w.probedMu.Unlock()
	probed.compact()
	if probed.len() > 0 {
		if err := w.lease.writeRefs(ctx, probed.ids); err != nil {
			return err
		}
	}
	ran, err := r.waitGC(ctx, w.lease.rec.Started)
	if err != nil || !ran {
		return err
	}
	// A GC overlapped this writer. What it may have removed: probed ids and,
	// if the base point is gone, what came from the base.
	check := probed.ids
	if w.base != nil {
		if _, err := r.readManifest(ctx, w.base.ID); errors.Is(err, ErrNotFound) {
			var all idSet
			for _, x := range indexes {
				for _, id := range x.nonZero() {
					all.add(id)
				}
				for _, id := range x.pageIDs() {
					all.add(id)
				}
			}
			all.compact()
			check = all.ids
		} else if err != nil {
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for _, id := range check {
		g.Go(func() error {
			for _, key := range []string{ChunkKey(id), pageKey(id), rootKey(id)} {
				ok, err := r.exists(gctx, key)
				if err != nil || ok {
					return err
				}
			}
			return fmt.Errorf("object %s was removed by a concurrent garbage collection; back up again: %w", id, ErrNotFound)
		})
	}
	return g.Wait()
}

// waitGC reports whether a GC started since since (a bucket time) or is
// running, after waiting for the running one (the holder of the lock when
// first looked at) to finish. A GC that takes the lock later sees this
// writer's lease and refs, so it need not be waited for.
func (r *Repository) waitGC(ctx context.Context, since time.Time) (bool, error) {
	ran := false
	holder := ""
	wait := 20 * time.Millisecond
	for {
		b, err := r.get(ctx, gcLockKey)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if err != nil {
			return false, err
		}
		var rec leaseRecord
		_ = json.Unmarshal(b, &rec)
		if holder == "" {
			holder = rec.ID
			if holder == "" {
				holder = "?"
			}
		} else if rec.ID != holder {
			break // the GC we saw ended; a newer one knows of this writer
		}
		a, err := r.attributes(ctx, gcLockKey)
		if errors.Is(err, ErrNotFound) {
			break
		}
		if err != nil {
			return false, err
		}
		if time.Since(a.ModTime) > 2*r.opts.LeaseTTL {
			break // a GC that died holding the lock: it removes nothing more
		}
		ran = true
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 2*time.Second)
	}
	if ran {
		return true, nil
	}
	a, err := r.attributes(ctx, gcLastKey)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return !a.ModTime.Before(since), nil
}

// gc is Repository.GC.
func (r *Repository) gc(ctx context.Context, o *GCOptions) (*GCReport, error) {
	var opts GCOptions
	if o != nil {
		opts = *o
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultGrace
	}
	lock, err := r.acquire(ctx, gcLockKey, "gc-"+randomHex(8), "")
	if errors.Is(err, ErrConflict) {
		a, aerr := r.attributes(ctx, gcLockKey)
		if aerr == nil && time.Since(a.ModTime) > 2*r.opts.LeaseTTL {
			// The holder died: take the lock over.
			if err := r.del(ctx, gcLockKey); err != nil {
				return nil, fmt.Errorf("gc: %w", err)
			}
			lock, err = r.acquire(ctx, gcLockKey, "gc-"+randomHex(8), "")
		}
	}
	if errors.Is(err, ErrConflict) {
		return nil, fmt.Errorf("gc: %w", ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("gc: take lock: %w", err)
	}
	defer lock.release(ctx)
	start := lock.rec.Started // the bucket's clock

	rep := &GCReport{}
	leases1, err := r.liveLeases(ctx, start)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	var badManifests []string
	ms, err := r.listManifests(ctx, false, func(key string, err error) { badManifests = append(badManifests, key) })
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	if len(badManifests) > 0 {
		return nil, fmt.Errorf("gc: unreadable restore points %s (repair or delete them first): %w", strings.Join(badManifests, ", "), ErrCorrupt)
	}
	leases2, err := r.liveLeases(ctx, start)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	cutoff := start
	have := map[string]bool{}
	for _, m := range ms {
		have[m.ID] = true
	}
	var extra []ChunkID
	for _, l := range append(leases1, leases2...) {
		if l.started.Before(cutoff) {
			cutoff = l.started
		}
		extra = append(extra, l.refs...)
		if l.base == "" || have[l.base] {
			continue
		}
		b, err := r.readManifest(ctx, l.base)
		if errors.Is(err, ErrNotFound) {
			// The writer may still reference the base's chunks; its Commit
			// re-checks them after this GC, but removing them would make it
			// fail: keep everything this time.
			rep.Skipped = fmt.Sprintf("lease %s is based on point %s, which is gone", l.key, l.base)
			return rep, nil
		}
		if err != nil {
			return nil, fmt.Errorf("gc: base of lease %s: %w", l.key, err)
		}
		have[b.ID] = true
		ms = append(ms, b)
	}
	cutoff = cutoff.Add(-opts.Grace)
	refs, err := r.collectRefs(ctx, ms, nil, false)
	if err != nil {
		return nil, fmt.Errorf("gc: mark: %w", err)
	}
	for _, id := range extra {
		refs.chunks.add(id)
		refs.pages.add(id)
		refs.roots.add(id)
	}
	refs.chunks.compact()
	refs.pages.compact()
	refs.roots.compact()

	var removed, pages, kept atomic.Int64
	var freed atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	sweep := func(prefix string, parse func(string) (ChunkID, bool), set *idSet, count *atomic.Int64) error {
		return r.list(gctx, prefix, func(o *blobListObject) error {
			id, ok := parse(o.Key)
			if !ok {
				return nil // not ours: leave it
			}
			if set.has(id) || !o.ModTime.Before(cutoff) {
				if prefix == chunkPrefix {
					kept.Add(1)
				}
				return nil
			}
			count.Add(1)
			freed.Add(o.Size)
			if opts.DryRun {
				return nil
			}
			key := o.Key
			g.Go(func() error {
				// Re-read the ModTime: a writer may have rewritten the
				// object since the listing.
				a, err := r.attributes(gctx, key)
				if errors.Is(err, ErrNotFound) {
					return nil
				}
				if err != nil {
					return err
				}
				if !a.ModTime.Before(cutoff) {
					return nil
				}
				return r.del(gctx, key)
			})
			return nil
		})
	}
	var rootsRemoved atomic.Int64
	err = errors.Join(
		sweep(chunkPrefix, func(k string) (ChunkID, bool) { return idFromFanoutKey(chunkPrefix, k) }, &refs.chunks, &removed),
		sweep(pagePrefix, func(k string) (ChunkID, bool) { return idFromFanoutKey(pagePrefix, k) }, &refs.pages, &pages),
		sweep(rootPrefix, func(k string) (ChunkID, bool) { id, err := parseRootKey(k); return id, err == nil }, &refs.roots, &rootsRemoved),
	)
	if werr := g.Wait(); err == nil {
		err = werr
	}
	if err != nil {
		return nil, fmt.Errorf("gc: sweep: %w", err)
	}
	rep.ChunksRemoved = int(removed.Load())
	rep.PagesRemoved = int(pages.Load() + rootsRemoved.Load())
	rep.BytesFreed = freed.Load()
	rep.ChunksKept = int(kept.Load())
	if !opts.DryRun {
		if err := r.put(ctx, gcLastKey, []byte(lock.rec.ID)); err != nil {
			return nil, fmt.Errorf("gc: %w", err)
		}
	}
	return rep, nil
}
