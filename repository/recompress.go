package repository

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"gocloud.dev/blob"
	"golang.org/x/sync/errgroup"

	"github.com/vmbackup/vmbackup/compress"
)

// RecompressOptions say which chunks Recompress rewrites and how.
type RecompressOptions struct {
	// Codec is the codec to store with (compress.Names); "" means the
	// repository's configured codec (Config.Codec).
	Codec string
	// Points limits the work to the chunks of these restore points (ids);
	// nil means every chunk in the repository.
	Points []string
	// Exclude skips the chunks that these restore points also reference:
	// given the point each VM had before a backup window, only the chunks
	// the window's points added are looked at. Only used with Points.
	Exclude []string
	// DryRun encodes but writes nothing; the report says what would change.
	DryRun bool
}

// RecompressReport says what Recompress did.
type RecompressReport struct {
	// Chunks is how many chunks were looked at, Candidates how many of
	// them were stored with another compressing codec than the target.
	Chunks     int
	Candidates int
	// Rewritten is how many candidates were rewritten (or, on a dry run,
	// would be): those the target codec stores smaller.
	Rewritten int
	// BytesBefore and BytesAfter are the stored size of the rewritten
	// chunks before and after.
	BytesBefore int64
	BytesAfter  int64
}

// Recompress re-encodes chunks stored with another compressing codec than
// the target, typically chunks a backup window stored with a fast codec
// (s2), into the repository's stronger one (zstd) off the window. A chunk
// keeps its id and key, so deduplication, restore points and garbage
// collection are unaffected; readers need nothing, since every stored chunk
// names its codec. Raw chunks (stored uncompressed because they did not
// compress) and chunks already in the target's format are left alone; the
// zstd levels share one format, so they are not converted into each other.
//
// Each chunk is read and verified against its id before it is rewritten,
// and only replaced when the new encoding is smaller; the replacement is a
// whole-object write, so a reader sees the old or the new encoding, both
// valid. Recompress may run beside backups, restores and garbage
// collection: a chunk that a garbage collection removes while it is being
// rewritten may come back as an unreferenced chunk, which the next garbage
// collection removes.
func (r *Repository) Recompress(ctx context.Context, opts *RecompressOptions) (*RecompressReport, error) {
	var o RecompressOptions
	if opts != nil {
		o = *opts
	}
	name := o.Codec
	if name == "" {
		name = r.cfg.Codec
	}
	target, err := compress.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("recompress: codec %q: %w", name, err)
	}
	var ids []ChunkID
	if o.Points != nil {
		if ids, err = r.chunksOf(ctx, o.Points); err != nil {
			return nil, fmt.Errorf("recompress: %w", err)
		}
		if len(o.Exclude) > 0 {
			old, err := r.chunksOf(ctx, o.Exclude)
			if err != nil {
				return nil, fmt.Errorf("recompress: %w", err)
			}
			ids = slices.DeleteFunc(ids, func(id ChunkID) bool {
				_, found := slices.BinarySearchFunc(old, id, compareIDs)
				return found
			})
		}
	} else if ids, err = r.listChunkIDs(ctx); err != nil {
		return nil, fmt.Errorf("recompress: %w", err)
	}

	rep := &RecompressReport{Chunks: len(ids)}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for _, id := range ids {
		g.Go(func() error {
			candidate, before, after, err := r.recompressChunk(gctx, id, target, o.DryRun)
			if err != nil {
				return fmt.Errorf("recompress chunk %s: %w", id, err)
			}
			mu.Lock()
			defer mu.Unlock()
			if candidate {
				rep.Candidates++
			}
			if after > 0 {
				rep.Rewritten++
				rep.BytesBefore += before
				rep.BytesAfter += after
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	return rep, nil
}

// recompressChunk rewrites chunk id with target if it is stored with
// another compressing codec and target stores it smaller; after is 0 if it
// was (or would be) left as it is.
func (r *Repository) recompressChunk(ctx context.Context, id ChunkID, target compress.Codec, dryRun bool) (candidate bool, before, after int64, err error) {
	key := ChunkKey(id)
	tag, err := r.firstByte(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return false, 0, 0, nil // collected meanwhile
	}
	if err != nil {
		return false, 0, 0, err
	}
	if compress.Tag(tag) == compress.TagNone || compress.Tag(tag) == target.Tag() {
		return false, 0, 0, nil
	}
	stored, err := r.get(ctx, key)
	if err != nil {
		return true, 0, 0, err
	}
	plain, err := decodeObject(key, id, stored, r.cfg.ChunkSize, nil)
	if err != nil {
		return true, 0, 0, err
	}
	enc := compress.Encode(nil, target, plain)
	if len(enc) >= len(stored) {
		return true, 0, 0, nil
	}
	if !dryRun {
		if there, err := r.exists(ctx, key); err != nil || !there {
			return true, 0, 0, err // removed meanwhile: do not bring it back
		}
		if err := r.put(ctx, key, enc); err != nil {
			return true, 0, 0, err
		}
	}
	return true, int64(len(stored)), int64(len(enc)), nil
}

// firstByte reads the first byte of key (a stored object's codec tag).
func (r *Repository) firstByte(ctx context.Context, key string) (byte, error) {
	var b [1]byte
	err := retryDo(ctx, func(ctx context.Context) error {
		rd, err := r.bucket.NewRangeReader(ctx, key, 0, 1, nil)
		if err != nil {
			return err
		}
		defer rd.Close()
		_, err = io.ReadFull(rd, b[:])
		return err
	})
	if err != nil {
		return 0, objectError("read", key, err)
	}
	return b[0], nil
}

// chunksOf returns the distinct chunk ids the points reference, sorted.
func (r *Repository) chunksOf(ctx context.Context, pointIDs []string) ([]ChunkID, error) {
	ms := make([]*Manifest, 0, len(pointIDs))
	for _, id := range pointIDs {
		m, err := r.Point(ctx, id)
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
	refs, err := r.collectRefs(ctx, ms, nil, false)
	if err != nil {
		return nil, err
	}
	refs.chunks.compact()
	return refs.chunks.ids, nil
}

// listChunkIDs lists the ids of every stored chunk.
func (r *Repository) listChunkIDs(ctx context.Context) ([]ChunkID, error) {
	var ids []ChunkID
	err := r.list(ctx, chunkPrefix, func(o *blob.ListObject) error {
		if id, ok := idFromFanoutKey(chunkPrefix, o.Key); ok {
			ids = append(ids, id)
		}
		return nil
	})
	return ids, err
}
