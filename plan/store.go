package plan

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"

	"github.com/vmbackup/vmbackup/internal/exclusive"
)

// Sentinel errors of a Store.
var (
	// ErrNotFound: no plan has that ID (or it was deleted).
	ErrNotFound = errors.New("plan: not found")
	// ErrConflict: the plan changed since the version the caller read
	// (or, on create, a plan with that ID exists). Get it again, reapply
	// the change, and retry.
	ErrConflict = errors.New("plan: version conflict")
)

// Store keeps plans. Writes are optimistic: Put and Delete name the
// version they are based on and fail with ErrConflict if another writer
// got there first, so two processes never silently overwrite each
// other's change.
type Store interface {
	// Get returns the plan with its current Version, or ErrNotFound.
	Get(ctx context.Context, id string) (Plan, error)
	// List returns every plan, sorted by ID.
	List(ctx context.Context) ([]Plan, error)
	// Put stores p, which must be valid. p.Version 0 creates the plan
	// (ErrConflict if it exists); otherwise p.Version must be the current
	// version (ErrConflict if not, ErrNotFound if the plan is gone). It
	// returns the plan as stored, with its new Version.
	Put(ctx context.Context, p Plan) (Plan, error)
	// Delete removes the plan if version is its current version (0: any
	// version). The plan's restore points are not touched: whether they
	// are kept is the caller's choice.
	Delete(ctx context.Context, id string, version int64) error
}

// Defaults of BlobStoreOptions.
const (
	DefaultPrefix       = "plans/"
	DefaultKeepVersions = 10
	DefaultPruneAfter   = time.Hour
)

// BlobStoreOptions configures a BlobStore; the zero value is usable.
type BlobStoreOptions struct {
	// Prefix is prepended to every key; "" means DefaultPrefix.
	Prefix string
	// KeepVersions is how many versions of a plan are kept (the newest;
	// older ones are deleted after each write); 0 means
	// DefaultKeepVersions, and at least 2 are kept.
	KeepVersions int
	// LocalDir, if set, is the directory a fileblob bucket is rooted at
	// (file:// URL path). Versions are then created by writing a temp file
	// and link(2)ing it to its name, which fails if the name exists: atomic
	// between processes, unlike fileblob's IfNotExist (see BlobStore).
	// Prefix must then be a plain relative path.
	LocalDir string
	// PruneAfter protects versions written less than this before the
	// newest one (by the bucket's clock) from pruning; it must exceed the
	// time a write takes from its upload to its check (see BlobStore).
	// 0 means DefaultPruneAfter.
	PruneAfter time.Duration
}

// BlobStore is the default Store: plans live in a gocloud.dev/blob bucket
// (usually the repository's), one object per version:
//
//	<prefix><id>/<version, 20 digits>.json
//
// How it is race-safe with only IfNotExist writes: version N+1 of a plan
// is written with IfNotExist, so of two writers that read version N only
// one can create N+1; the other gets ErrConflict. The current version is
// the highest present. A deletion is a version too (a tombstone), so a
// deleted plan's next writer still competes for one key, and re-creating
// it continues the numbering.
//
// Old versions are pruned, which reopens their keys: a writer that read
// version N long ago could create N+1 after it was pruned. Each version
// therefore records a random nonce and the nonce of the version it was
// based on. After writing N+1, the writer lists the plan: if no higher
// version exists, or N+2 exists and was based on its nonce (a follower
// that read its write), it won; otherwise its write was stale, it is
// deleted again and the writer gets ErrConflict. A stale N+1 is never the
// highest version, so no reader ever sees it as current. So that this
// check never mistakes a good write for a stale one, versions written
// within PruneAfter of the newest are not pruned (their followers are
// then still there to be read). The check needs strongly consistent
// listing, which S3, GCS, Azure, file and mem have.
//
// The guarantee is only as strong as the driver's IfNotExist. memblob,
// s3blob (S3 If-None-Match, tested against gofakes3 with two stores
// racing), gcsblob and azureblob are atomic.
// fileblob (gocloud.dev v0.47) is not: it checks for the file and then
// renames over it, so two processes writing one plan in one directory at
// the same instant may both succeed. Set BlobStoreOptions.LocalDir for
// file:// buckets: versions are then published with link(2), which is
// atomic. A BlobStore also serialises its own writes, so goroutines
// sharing one are safe on every driver.
type BlobStore struct {
	b      *blob.Bucket
	prefix string
	keep   int
	// pruneAfter and localDir: see BlobStoreOptions.
	pruneAfter time.Duration
	localDir   string
	mu         sync.Mutex // serialises commits (see the fileblob note)
}

var _ Store = (*BlobStore)(nil)

// NewBlobStore returns a Store in b. The caller keeps ownership of b.
func NewBlobStore(b *blob.Bucket, opts *BlobStoreOptions) *BlobStore {
	var o BlobStoreOptions
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.KeepVersions == 0 {
		o.KeepVersions = DefaultKeepVersions
	}
	if o.PruneAfter <= 0 {
		o.PruneAfter = DefaultPruneAfter
	}
	return &BlobStore{b: b, prefix: o.Prefix, keep: max(o.KeepVersions, 2), pruneAfter: o.PruneAfter, localDir: o.LocalDir}
}

// NewMemStore returns a BlobStore in a new in-memory bucket, for tests
// and embedders that keep plans elsewhere.
func NewMemStore() *BlobStore { return NewBlobStore(memblob.OpenBucket(nil), nil) }

// record is the stored form of one version.
type record struct {
	Nonce   string `json:"nonce"`
	Base    string `json:"base,omitempty"` // nonce of the version this one is based on
	Deleted bool   `json:"deleted,omitempty"`
	Plan    *Plan  `json:"plan,omitempty"`
}

func (s *BlobStore) dir(id string) string { return s.prefix + id + "/" }

func (s *BlobStore) key(id string, v int64) string {
	return fmt.Sprintf("%s%020d.json", s.dir(id), v)
}

// version is one stored version of a plan.
type version struct {
	n   int64
	mod time.Time // the store's time of the write
}

// versions lists the plan's versions, ascending. fileblob fails a listing
// when a file vanishes under it (a pruned version, another process's temp
// file), so a NotFound error is retried.
func (s *BlobStore) versions(ctx context.Context, id string) ([]version, error) {
	for try := 0; ; try++ {
		vs, err := s.listVersions(ctx, id)
		if gcerrors.Code(err) == gcerrors.NotFound && try < 10 {
			continue
		}
		return vs, err
	}
}

func (s *BlobStore) listVersions(ctx context.Context, id string) ([]version, error) {
	var vs []version
	it := s.b.List(&blob.ListOptions{Prefix: s.dir(id)})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("plan: list versions of %q: %w", id, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(obj.Key, s.dir(id)), ".json")
		v, err := strconv.ParseInt(name, 10, 64)
		if err != nil || strings.Contains(name, "/") {
			continue // not ours
		}
		vs = append(vs, version{v, obj.ModTime})
	}
	slices.SortFunc(vs, func(a, b version) int { return cmp.Compare(a.n, b.n) })
	return vs, nil
}

func (s *BlobStore) read(ctx context.Context, id string, v int64) (record, error) {
	var r record
	b, err := s.b.ReadAll(ctx, s.key(id, v))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("plan: decode %s: %w", s.key(id, v), err)
	}
	return r, nil
}

// latest returns the current version and its record (0 if none). It
// retries when pruning races the read.
func (s *BlobStore) latest(ctx context.Context, id string) (int64, record, error) {
	for try := 0; ; try++ {
		vs, err := s.versions(ctx, id)
		if err != nil || len(vs) == 0 {
			return 0, record{}, err
		}
		v := vs[len(vs)-1].n
		r, err := s.read(ctx, id, v)
		if gcerrors.Code(err) == gcerrors.NotFound && try < 5 {
			continue
		}
		if err != nil {
			return 0, record{}, fmt.Errorf("plan: read %q version %d: %w", id, v, err)
		}
		return v, r, nil
	}
}

func checkID(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("%w: id %q", ErrNotFound, id)
	}
	return nil
}

// Get implements Store.
func (s *BlobStore) Get(ctx context.Context, id string) (Plan, error) {
	if err := checkID(id); err != nil {
		return Plan{}, err
	}
	v, r, err := s.latest(ctx, id)
	if err != nil {
		return Plan{}, err
	}
	if v == 0 || r.Deleted || r.Plan == nil {
		return Plan{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	p := *r.Plan
	p.Version = v
	return p, nil
}

// List implements Store.
func (s *BlobStore) List(ctx context.Context) ([]Plan, error) {
	var ids []string
	it := s.b.List(&blob.ListOptions{Prefix: s.prefix, Delimiter: "/"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("plan: list plans: %w", err)
		}
		if obj.IsDir {
			ids = append(ids, strings.TrimSuffix(strings.TrimPrefix(obj.Key, s.prefix), "/"))
		}
	}
	slices.Sort(ids)
	var plans []Plan
	for _, id := range ids {
		p, err := s.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		plans = append(plans, p)
	}
	return plans, nil
}

// Put implements Store.
func (s *BlobStore) Put(ctx context.Context, p Plan) (Plan, error) {
	if err := p.Validate(); err != nil {
		return Plan{}, err
	}
	base := p.Version
	stored := p
	stored.Version = 0 // the key holds the version
	r := record{Plan: &stored}
	v, err := s.write(ctx, p.ID, base, base == 0, r)
	if err != nil {
		return Plan{}, err
	}
	p.Version = v
	return p, nil
}

// Delete implements Store.
func (s *BlobStore) Delete(ctx context.Context, id string, version int64) error {
	if err := checkID(id); err != nil {
		return err
	}
	if version == 0 {
		v, r, err := s.latest(ctx, id)
		if err != nil {
			return err
		}
		if v == 0 || r.Deleted {
			return fmt.Errorf("%w: %q", ErrNotFound, id)
		}
		version = v
	}
	_, err := s.write(ctx, id, version, false, record{Deleted: true})
	return err
}

// write stores r as the version after base (create: after the current
// tombstone, if any) by the protocol of the BlobStore doc.
func (s *BlobStore) write(ctx context.Context, id string, base int64, create bool, r record) (int64, error) {
	cur, curRec, err := s.latest(ctx, id)
	if err != nil {
		return 0, err
	}
	live := cur > 0 && !curRec.Deleted
	switch {
	case create && live:
		return 0, fmt.Errorf("%w: plan %q exists (version %d)", ErrConflict, id, cur)
	case create:
		base = cur
	case !live:
		return 0, fmt.Errorf("%w: %q", ErrNotFound, id)
	case base != cur:
		return 0, fmt.Errorf("%w: plan %q is at version %d, not %d", ErrConflict, id, cur, base)
	}
	if cur > 0 {
		r.Base = curRec.Nonce
	}
	return s.commit(ctx, id, base+1, r)
}

// commit writes r as version next with IfNotExist, withdraws it if it
// turns out stale, and prunes old versions.
func (s *BlobStore) commit(ctx context.Context, id string, next int64, r record) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	base := next - 1
	r.Nonce = newNonce()
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return 0, fmt.Errorf("plan: encode %q: %w", id, err)
	}
	key := s.key(id, next)
	if s.localDir != "" {
		err = exclusive.Create(filepath.Join(s.localDir, filepath.FromSlash(key)), b)
		if errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("%w: plan %q version %d was written by another writer", ErrConflict, id, next)
		}
	} else {
		err = s.b.WriteAll(ctx, key, b, &blob.WriterOptions{IfNotExist: true, ContentType: "application/json"})
		if gcerrors.Code(err) == gcerrors.FailedPrecondition {
			return 0, fmt.Errorf("%w: plan %q version %d was written by another writer", ErrConflict, id, next)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("plan: write %s: %w", key, err)
	}
	vs, err := s.versions(ctx, id)
	if err != nil {
		return 0, err
	}
	i := slices.IndexFunc(vs, func(v version) bool { return v.n == next })
	if i < 0 || i < len(vs)-1 {
		// Newer versions exist. They may be followers that read this
		// write (the next one then names its nonce as Base) or versions
		// that existed before it, when the key had been pruned: a stale
		// write, which is withdrawn.
		won := false
		if i >= 0 && vs[i+1].n == next+1 {
			if f, err := s.read(ctx, id, next+1); err == nil && f.Base == r.Nonce {
				won = true
			}
		}
		if !won {
			if err := s.b.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return 0, fmt.Errorf("%w: plan %q moved past version %d (and removing the stale write failed: %v)", ErrConflict, id, base, err)
			}
			return 0, fmt.Errorf("%w: plan %q moved past version %d", ErrConflict, id, base)
		}
	}
	// Prune: keep the newest s.keep versions, and every version written
	// within pruneAfter of the newest (by the store's clock), so that a
	// writer's check above always finds its own version and its
	// follower.
	newest := vs[len(vs)-1].mod
	for _, v := range vs {
		if v.n > next-int64(s.keep) {
			break
		}
		if newest.Sub(v.mod) <= s.pruneAfter {
			continue
		}
		if err := s.b.Delete(ctx, s.key(id, v.n)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return 0, fmt.Errorf("plan: prune %q version %d: %w", id, v.n, err)
		}
	}
	return next, nil
}

func newNonce() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
