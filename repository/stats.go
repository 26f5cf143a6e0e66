package repository

import (
	"context"
	"fmt"
)

// Stats sums up the space a set of restore points takes.
type Stats struct {
	Points int // restore points counted
	Disks  int // disks of those points
	// LogicalBytes is the sum of the disks' sizes: what restoring every
	// point would write.
	LogicalBytes int64
	// AllocatedBytes is the part of LogicalBytes not in all-zero chunks.
	AllocatedBytes int64
	// Chunks is the number of distinct chunks referenced, UniqueBytes their
	// plaintext size and StoredBytes what they take in the bucket.
	Chunks      int
	UniqueBytes int64
	StoredBytes int64
	// MetadataBytes is what the points' index roots and pages take in the
	// bucket (manifests not counted).
	MetadataBytes int64
}

// DedupRatio is AllocatedBytes / UniqueBytes: how many times each stored
// byte of plaintext is used (1 without any sharing); 0 if nothing is stored.
func (s *Stats) DedupRatio() float64 {
	if s.UniqueBytes == 0 {
		return 0
	}
	return float64(s.AllocatedBytes) / float64(s.UniqueBytes)
}

// CompressionRatio is UniqueBytes / StoredBytes (1 for incompressible data);
// 0 if nothing is stored.
func (s *Stats) CompressionRatio() float64 {
	if s.StoredBytes == 0 {
		return 0
	}
	return float64(s.UniqueBytes) / float64(s.StoredBytes)
}

// Stats counts every committed restore point of the repository. It reads
// every index (each distinct page once) and lists the bucket's chunks; its
// memory grows with the number of distinct chunks referenced (about 80
// bytes each).
func (r *Repository) Stats(ctx context.Context) (*Stats, error) {
	ms, err := r.listManifests(ctx, false, nil)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	return r.stats(ctx, ms)
}

// PointStats counts the given restore points together as if they were
// alone in the repository: a chunk they share counts once, and a chunk they
// share with other points counts in full. With one point it is that point's
// size; with a plan's points, the plan's.
func (r *Repository) PointStats(ctx context.Context, ms ...*Manifest) (*Stats, error) {
	return r.stats(ctx, ms)
}

func (r *Repository) stats(ctx context.Context, ms []*Manifest) (*Stats, error) {
	refs, err := r.collectRefs(ctx, ms, nil, true)
	if err != nil {
		return nil, fmt.Errorf("stats: %w", err)
	}
	s := &Stats{Points: len(ms), Chunks: refs.chunks.len()}
	for _, m := range ms {
		for _, d := range m.Disks {
			s.Disks++
			s.LogicalBytes += d.Size
			rt := refs.rootByKey[d.Index]
			if rt == nil {
				continue
			}
			for k, pid := range rt.pages {
				pi := refs.pageInfo[pid]
				s.AllocatedBytes += int64(pi.nonZero) * int64(rt.chunkSize)
				if k == len(rt.pages)-1 && pi.lastNonZero {
					if short := rt.size % int64(rt.chunkSize); short != 0 {
						s.AllocatedBytes -= int64(rt.chunkSize) - short
					}
				}
			}
		}
	}
	for _, n := range refs.sizes {
		s.UniqueBytes += int64(n)
	}
	for _, p := range []struct {
		prefix string
		set    *idSet
		parse  func(string) (ChunkID, bool)
		meta   bool
	}{
		{chunkPrefix, &refs.chunks, func(k string) (ChunkID, bool) { return idFromFanoutKey(chunkPrefix, k) }, false},
		{pagePrefix, &refs.pages, func(k string) (ChunkID, bool) { return idFromFanoutKey(pagePrefix, k) }, true},
		{rootPrefix, &refs.roots, func(k string) (ChunkID, bool) { id, err := parseRootKey(k); return id, err == nil }, true},
	} {
		if err := r.list(ctx, p.prefix, func(o *blobListObject) error {
			if id, ok := p.parse(o.Key); ok && p.set.has(id) {
				if p.meta {
					s.MetadataBytes += o.Size
				} else {
					s.StoredBytes += o.Size
				}
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("stats: %w", err)
		}
	}
	return s, nil
}
