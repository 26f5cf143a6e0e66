package repository

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/vmbackup/vmbackup/internal/fsflush"
)

// ManifestVersion is the manifest format this code writes and the newest
// it reads.
const ManifestVersion = 1

// pointIDLayout is the time part of a point id; ids sort by creation time
// (to the second) and end in random hex that tells apart points of one
// second.
const pointIDLayout = "20060102T150405Z"

func pointKey(id string) string { return pointPrefix + id }

// manifestEnvelope is the stored form of a manifest: the manifest's JSON
// bytes verbatim plus their SHA-256, so that any changed byte is detected
// even where it would still parse.
type manifestEnvelope struct {
	SHA256   string          `json:"sha256"`
	Manifest json.RawMessage `json:"manifest"`
}

func encodeManifest(m *Manifest) ([]byte, error) {
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	sum := sha256.Sum256(raw)
	return json.MarshalIndent(manifestEnvelope{SHA256: hex.EncodeToString(sum[:]), Manifest: raw}, "", " ")
}

func decodeManifest(key string, b []byte) (*Manifest, error) {
	var env manifestEnvelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %w", key, err, ErrCorrupt)
	}
	// MarshalIndent re-indents the embedded manifest; compact it back to the
	// bytes that were hashed.
	var raw bytes.Buffer
	if err := json.Compact(&raw, env.Manifest); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %w", key, err, ErrCorrupt)
	}
	sum := sha256.Sum256(raw.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return nil, fmt.Errorf("manifest %s: checksum mismatch: %w", key, ErrCorrupt)
	}
	var m Manifest
	if err := json.Unmarshal(raw.Bytes(), &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w: %w", key, err, ErrCorrupt)
	}
	if m.Version > ManifestVersion {
		return nil, fmt.Errorf("manifest %s: version %d, this code reads up to %d: %w", key, m.Version, ManifestVersion, ErrVersion)
	}
	if m.Version < 1 || pointKey(m.ID) != key {
		return nil, fmt.Errorf("manifest %s: version %d, id %q: %w", key, m.Version, m.ID, ErrCorrupt)
	}
	return &m, nil
}

func validPointID(id string) bool {
	return id != "" && !strings.ContainsAny(id, "/\\") && id != "." && id != ".."
}

func (r *Repository) readManifest(ctx context.Context, id string) (*Manifest, error) {
	if !validPointID(id) {
		return nil, fmt.Errorf("point %q: %w", id, ErrNotFound)
	}
	key := pointKey(id)
	b, err := r.get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("point %s: %w", id, err)
	}
	return decodeManifest(key, b)
}

// manifestCache keeps decoded manifests by key. A manifest never changes
// once written, so listing the points needs to read only those it has not
// seen: a backup, which looks up its VM's newest point, reads one new
// manifest instead of every manifest of every VM. Verify bypasses it.
type manifestCache struct {
	mu sync.Mutex
	m  map[string]*Manifest
}

// keep replaces the cache's contents with ms (by keys).
func (c *manifestCache) keep(keys []string, ms []*Manifest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = make(map[string]*Manifest, len(keys))
	for i, k := range keys {
		if ms[i] != nil {
			c.m[k] = ms[i]
		}
	}
}

func (c *manifestCache) get(key string) *Manifest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

// cloneManifest copies m deep enough that a caller changing the copy
// (its disks, its VM configuration) leaves m as it is.
func cloneManifest(m *Manifest) *Manifest {
	c := *m
	c.Disks = slices.Clone(m.Disks)
	c.VM = slices.Clone(m.VM)
	return &c
}

// listManifests reads every manifest (those not in the cache, unless
// fresh); bad ones are passed to bad (if not nil) and left out. The
// manifests returned are the caller's to change.
func (r *Repository) listManifests(ctx context.Context, fresh bool, bad func(key string, err error)) ([]*Manifest, error) {
	var keys []string
	if err := r.list(ctx, pointPrefix, func(o *blobListObject) error {
		keys = append(keys, o.Key)
		return nil
	}); err != nil {
		return nil, err
	}
	ms := make([]*Manifest, len(keys))
	errs := make([]error, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Concurrency)
	for i, key := range keys {
		if !fresh {
			if m := r.manifests.get(key); m != nil {
				ms[i] = m
				continue
			}
		}
		g.Go(func() error {
			b, err := r.get(gctx, key)
			if errors.Is(err, ErrNotFound) {
				return nil // deleted meanwhile
			}
			if err != nil {
				return err
			}
			ms[i], errs[i] = decodeManifest(key, b)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	r.manifests.keep(keys, ms)
	out := ms[:0]
	for i, m := range ms {
		if errs[i] != nil {
			if bad != nil {
				bad(keys[i], errs[i])
			}
			continue
		}
		if m != nil {
			out = append(out, cloneManifest(m))
		}
	}
	return out, nil
}

func sortNewestFirst(ms []*Manifest) {
	slices.SortFunc(ms, func(a, b *Manifest) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
}

// listPoints is ListPoints. A manifest that cannot be read (corrupt, newer
// version) is left out of the list and logged, so one damaged point does not
// stop backups of every VM; Point and Verify report it as an error.
func (r *Repository) listPoints(ctx context.Context, f Filter) ([]*Manifest, error) {
	ms, err := r.listManifests(ctx, false, func(key string, err error) {
		slog.WarnContext(ctx, "repository: unreadable restore point left out of the list", "key", key, "err", err)
	})
	if err != nil {
		return nil, fmt.Errorf("list points: %w", err)
	}
	ms = slices.DeleteFunc(ms, func(m *Manifest) bool {
		return (f.VMID != "" && m.VMID != f.VMID) || (f.PlanID != "" && m.PlanID != f.PlanID)
	})
	sortNewestFirst(ms)
	return ms, nil
}

func (r *Repository) deletePoint(ctx context.Context, id string) error {
	if !validPointID(id) {
		return fmt.Errorf("delete point %q: %w", id, ErrNotFound)
	}
	key := pointKey(id)
	ok, err := r.exists(ctx, key)
	if err != nil {
		return fmt.Errorf("delete point %s: %w", id, err)
	}
	if !ok {
		return fmt.Errorf("delete point %s: %w", id, ErrNotFound)
	}
	if err := r.del(ctx, key); err != nil {
		return fmt.Errorf("delete point %s: %w", id, err)
	}
	return nil
}

func (r *Repository) newPointWriter(ctx context.Context, base *Manifest) (*PointWriter, error) {
	baseID := ""
	if base != nil {
		baseID = base.ID
	}
	// The lease goes first: from now on GC keeps what this writer writes,
	// and the base it is about to read.
	l, err := r.acquireLease(ctx, baseID)
	if err != nil {
		return nil, fmt.Errorf("new point writer: %w", err)
	}
	w := &PointWriter{r: r, lease: l, base: base, known: make(map[ChunkID]struct{}), pages: make(map[ChunkID]struct{})}
	if base != nil {
		for _, d := range base.Disks {
			// The ids are streamed page by page, not loaded as a whole
			// index: the writer keeps only the distinct non-zero ones.
			pages, err := r.scanIndex(ctx, d.Index, func(ids []ChunkID) {
				for _, id := range ids {
					if !id.IsZero() {
						w.known[id] = struct{}{}
					}
				}
			})
			if err != nil {
				if ctx.Err() != nil {
					l.release(context.WithoutCancel(ctx))
					return nil, fmt.Errorf("new point writer: %w", ctx.Err())
				}
				// A damaged base only costs dedup: the bucket is asked
				// instead. Ids from the pages that were read are stored
				// (they verified), but no page of this index counts as
				// stored.
				slog.WarnContext(ctx, "repository: base index unreadable, not seeding dedup from it", "point", base.ID, "disk", d.ID, "err", err)
				continue
			}
			for _, p := range pages {
				w.pages[p] = struct{}{}
			}
		}
	}
	return w, nil
}

func (w *PointWriter) isDone() bool {
	w.doneMu.Lock()
	defer w.doneMu.Unlock()
	return w.done
}

// commit is PointWriter.Commit.
func (w *PointWriter) commit(ctx context.Context, m *Manifest, indexes map[string]*Index) error {
	r := w.r
	if w.isDone() {
		return errors.New("commit point: point writer already committed or aborted")
	}
	if err := w.checkIndexes(ctx, m, indexes); err != nil {
		return fmt.Errorf("commit point: %w", err)
	}
	for i := range m.Disks {
		d := &m.Disks[i]
		key, err := w.writeIndex(ctx, indexes[d.ID])
		if err != nil {
			return fmt.Errorf("commit point: disk %s: %w", d.ID, err)
		}
		d.Index = key
	}
	if err := w.checkGC(ctx, m, indexes); err != nil {
		return fmt.Errorf("commit point: %w", err)
	}
	if r.localDir != "" {
		// Object stores make an object durable before they acknowledge
		// its write; a local filesystem only when told. Without this, a
		// power loss after the (synced) manifest could leave it naming
		// chunks and index pages that never reached the disk.
		if err := fsflush.Flush(r.localDir); err != nil {
			return fmt.Errorf("commit point: flush %s: %w", r.localDir, err)
		}
	}
	m.Version = ManifestVersion
	m.ChunkSize = r.cfg.ChunkSize
	if m.Created.IsZero() {
		m.Created = r.opts.Now()
	}
	m.Created = m.Created.UTC()
	for attempt := 0; ; attempt++ {
		m.ID = m.Created.Format(pointIDLayout) + "-" + randomHex(4)
		data, err := encodeManifest(m)
		if err != nil {
			return err
		}
		err = r.putIfNotExist(ctx, pointKey(m.ID), data)
		if errors.Is(err, ErrConflict) && attempt < 3 {
			continue
		}
		if err != nil {
			m.ID = ""
			return fmt.Errorf("commit point: %w", err)
		}
		break
	}
	w.doneMu.Lock()
	w.done = true
	w.doneMu.Unlock()
	if err := w.lease.release(ctx); err != nil {
		// The point exists; a stale lease only delays GC until it expires.
		slog.WarnContext(ctx, "repository: releasing lease", "lease", w.lease.key, "err", err)
	}
	return nil
}

// checkIndexes checks that indexes match the manifest's disks and that
// every chunk they name is stored (put by this writer, known from the base,
// or found in the bucket), so a committed point never references a chunk
// that is not there.
func (w *PointWriter) checkIndexes(ctx context.Context, m *Manifest, indexes map[string]*Index) error {
	seen := make(map[string]bool, len(m.Disks))
	var unknown []ChunkID
	w.mu.RLock()
	for _, d := range m.Disks {
		if seen[d.ID] {
			w.mu.RUnlock()
			return fmt.Errorf("disk id %q appears twice", d.ID)
		}
		seen[d.ID] = true
		x := indexes[d.ID]
		if x == nil {
			w.mu.RUnlock()
			return fmt.Errorf("disk %s: no index", d.ID)
		}
		if x.size != d.Size || x.chunkSize != w.r.cfg.ChunkSize {
			w.mu.RUnlock()
			return fmt.Errorf("disk %s: index covers %d bytes in %d-byte chunks, disk is %d bytes in %d-byte chunks", d.ID, x.size, x.chunkSize, d.Size, w.r.cfg.ChunkSize)
		}
		for _, id := range x.nonZero() {
			if _, ok := w.known[id]; !ok {
				unknown = append(unknown, id)
			}
		}
	}
	w.mu.RUnlock()
	if len(indexes) != len(m.Disks) {
		for id := range indexes {
			if !seen[id] {
				return fmt.Errorf("index for disk %q, which the manifest does not list", id)
			}
		}
	}
	slices.SortFunc(unknown, func(a, b ChunkID) int { return bytes.Compare(a[:], b[:]) })
	unknown = slices.Compact(unknown)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.r.opts.Concurrency)
	var mu sync.Mutex
	for _, id := range unknown {
		g.Go(func() error {
			ok, err := w.r.exists(gctx, ChunkKey(id))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("index references chunk %s, which is not stored: %w", id, ErrNotFound)
			}
			w.probe(id)
			mu.Lock()
			w.mu.Lock()
			w.known[id] = struct{}{}
			w.mu.Unlock()
			mu.Unlock()
			return nil
		})
	}
	return g.Wait()
}

func (w *PointWriter) abort(ctx context.Context) error {
	w.doneMu.Lock()
	if w.done {
		w.doneMu.Unlock()
		return nil
	}
	w.done = true
	w.doneMu.Unlock()
	if err := w.lease.release(ctx); err != nil {
		return fmt.Errorf("abort point: %w", err)
	}
	return nil
}
