package repository

// This file holds the repository's public API; the bodies live in the
// files named after each concern (chunks, index, points, gc, verify, stats).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"gocloud.dev/blob"

	"github.com/vmbackup/vmbackup/compress"
)

// Sentinel errors; every error the package returns for these cases wraps one.
var (
	// ErrNotFound: no such restore point, index, chunk or object.
	ErrNotFound = errors.New("repository: not found")
	// ErrCorrupt: stored data does not match its id or cannot be decoded.
	ErrCorrupt = errors.New("repository: corrupt data")
	// ErrNoRepository: the bucket holds no repository (Open).
	ErrNoRepository = errors.New("repository: no repository in bucket")
	// ErrExists: a repository already exists there (Init).
	ErrExists = errors.New("repository: already exists")
	// ErrVersion: the repository's format is newer than this code.
	ErrVersion = errors.New("repository: unsupported format version")
)

// ChunkID names a chunk: SHA-256 of its plaintext.
type ChunkID [32]byte

// ZeroChunk is the index entry of an all-zero chunk, which is never stored.
var ZeroChunk ChunkID

// IsZero reports whether id is ZeroChunk.
func (id ChunkID) IsZero() bool { return id == ZeroChunk }

// String returns the id in hex.
func (id ChunkID) String() string { return hex.EncodeToString(id[:]) }

// Config is the repository's configuration, fixed at Init.
type Config struct {
	Version   int    `json:"version"`
	ID        string `json:"id"`
	ChunkSize int    `json:"chunk_size"`
	Codec     string `json:"codec"`
}

// Options tune an opened repository. A nil *Options means the defaults.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Codec overrides the configured default codec for writes ("" keeps it).
	Codec string
	// Concurrency bounds parallel object reads/writes in Verify, GC and
	// index I/O; 0 means DefaultConcurrency.
	Concurrency int
	// LeaseTTL is how long a PointWriter's lease stays live without a
	// refresh; writers refresh it every LeaseTTL/3. 0 means DefaultLeaseTTL.
	LeaseTTL time.Duration
}

// InitOptions configure a new repository. A nil *InitOptions means defaults.
type InitOptions struct {
	Options
	ChunkSize int    // power of two, 64 KiB..16 MiB; 0 means DefaultChunkSize
	Codec     string // compress.Lookup name; "" means compress.Default
}

// DefaultChunkSize is the chunk size of a repository made with defaults:
// 256 KiB, chosen from measurements (see "Chunk size and codec" in the
// package doc): a quarter of the growth and a third of the time of an
// incremental backup at 1 MiB, for about three times as many objects.
const DefaultChunkSize = 256 << 10

// Repository is a chunk store plus restore points in a gocloud.dev bucket.
// It is safe for concurrent use.
type Repository struct {
	bucket     *blob.Bucket
	ownsBucket bool
	localDir   string // bucket directory for file:// URLs: conditional writes use link(2)
	cfg        Config
	codec      compress.Codec
	opts       Options
	encPool    sync.Pool     // *[]byte encode buffers
	manifests  manifestCache // decoded manifests, by key
	flush      flusher       // background flushes of a file:// repository
}

// Init creates a repository at a gocloud URL (file://, mem://, s3://, ...).
func Init(ctx context.Context, url string, opts *InitOptions) (*Repository, error) {
	return initURL(ctx, url, opts)
}

// Open opens the repository at a gocloud URL.
func Open(ctx context.Context, url string, opts *Options) (*Repository, error) {
	return openURL(ctx, url, opts)
}

// InitBucket creates a repository in an opened bucket (not closed by Close).
func InitBucket(ctx context.Context, b *blob.Bucket, opts *InitOptions) (*Repository, error) {
	return initBucket(ctx, b, "", false, opts)
}

// OpenBucket opens the repository in an opened bucket (not closed by Close).
func OpenBucket(ctx context.Context, b *blob.Bucket, opts *Options) (*Repository, error) {
	return openBucket(ctx, b, "", false, opts)
}

// Close releases the repository (and the bucket, if Open/Init opened it).
func (r *Repository) Close() error {
	if r.ownsBucket {
		return r.bucket.Close()
	}
	return nil
}

// Config returns the repository's configuration.
func (r *Repository) Config() Config {
	return r.cfg
}

// Bucket returns the underlying bucket, for stores that keep their own
// objects beside the repository's (plans, job history) under their own
// prefix.
func (r *Repository) Bucket() *blob.Bucket {
	return r.bucket
}

// LocalDir is the directory of a repository opened by a file:// URL, ""
// otherwise. Stores that keep objects in the same bucket need it for
// conditional writes that are atomic between processes (fileblob's are not;
// see the package doc).
func (r *Repository) LocalDir() string {
	return r.localDir
}

// HashChunk returns the id of a chunk's plaintext.
func (r *Repository) HashChunk(p []byte) ChunkID {
	return sha256.Sum256(p)
}

// Manifest is a restore point: one VM at one instant. A point exists once
// its manifest is written; it is self-contained.
type Manifest struct {
	Version int    `json:"version"`
	ID      string `json:"id"` // sortable by creation time; set by Commit
	VMID    string `json:"vm_id"`
	VMName  string `json:"vm_name"`
	// VM is the VM's configuration as the hypervisor reported it (the
	// engine stores a hypervisor.VM here as JSON).
	VM          json.RawMessage `json:"vm,omitempty"`
	PlanID      string          `json:"plan_id,omitempty"`
	Created     time.Time       `json:"created"`          // set by Commit from the clock if zero
	Kind        string          `json:"kind"`             // "full" or "incremental"
	Reason      string          `json:"reason,omitempty"` // why full (or why incremental)
	Consistency string          `json:"consistency"`      // "crash" or "application"
	Note        string          `json:"consistency_note,omitempty"`
	Manual      bool            `json:"manual"`     // made by hand, not by schedule
	ChunkSize   int             `json:"chunk_size"` // set by Commit
	Disks       []DiskRecord    `json:"disks"`
}

// DiskRecord is one disk of a restore point.
type DiskRecord struct {
	ID          string    `json:"id"`
	Name        string    `json:"name,omitempty"`
	Size        int64     `json:"size"`
	Bus         string    `json:"bus,omitempty"`
	BootOrder   int       `json:"boot_order,omitempty"`
	Index       string    `json:"index"` // key of the disk's index root; set by Commit
	ChangeToken string    `json:"change_token,omitempty"`
	Stats       DiskStats `json:"stats"`
}

// DiskStats counts the work of one disk's backup.
type DiskStats struct {
	BytesRead   int64 `json:"bytes_read"`   // read from the hypervisor
	BytesNew    int64 `json:"bytes_new"`    // plaintext of chunks new to the repository
	BytesStored int64 `json:"bytes_stored"` // what those new chunks take in the bucket
}

// Filter selects restore points; empty fields match all.
type Filter struct {
	VMID   string
	PlanID string
}

// ListPoints returns committed restore points, newest first.
func (r *Repository) ListPoints(ctx context.Context, f Filter) ([]*Manifest, error) {
	return r.listPoints(ctx, f)
}

// Point returns one restore point by id (ErrNotFound if absent).
func (r *Repository) Point(ctx context.Context, id string) (*Manifest, error) {
	return r.readManifest(ctx, id)
}

// DeletePoint forgets a restore point (its manifest); chunks are freed by GC.
func (r *Repository) DeletePoint(ctx context.Context, id string) error {
	return r.deletePoint(ctx, id)
}

// Index maps each chunk slot of a disk to a chunk id. Slot i covers bytes
// [i*ChunkSize, min((i+1)*ChunkSize, Size)). It holds memory only for
// pages (PageSlots slots) that have a non-zero slot, so a large sparse
// disk costs what its data does.
type Index struct {
	size      int64
	chunkSize int
	n         int                      // slots
	pages     []atomic.Pointer[idPage] // nil: every slot of the page is ZeroChunk
}

// NewIndex returns an index of all-zero slots for a disk of size bytes.
func NewIndex(size int64, chunkSize int) *Index {
	return newIndex(size, chunkSize)
}

// Size is the disk size the index covers.
func (x *Index) Size() int64 {
	return x.size
}

// ChunkSize is the slot size.
func (x *Index) ChunkSize() int {
	return x.chunkSize
}

// Len is the number of slots.
func (x *Index) Len() int {
	return x.n
}

// Get returns slot i's chunk id.
func (x *Index) Get(i int) ChunkID {
	x.check(i)
	if p := x.pages[i/PageSlots].Load(); p != nil {
		return p[i%PageSlots]
	}
	return ZeroChunk
}

// Set sets slot i's chunk id. Safe for concurrent use on distinct slots.
func (x *Index) Set(i int, id ChunkID) {
	x.check(i)
	k := i / PageSlots
	p := x.pages[k].Load()
	if p == nil {
		if id.IsZero() {
			return
		}
		// If another slot of the page is set at the same time, one page
		// wins and both use it.
		x.pages[k].CompareAndSwap(nil, new(idPage))
		p = x.pages[k].Load()
	}
	p[i%PageSlots] = id
}

// Clone returns an independent copy.
func (x *Index) Clone() *Index {
	c := newIndex(x.size, x.chunkSize)
	for k := range x.pages {
		if p := x.pages[k].Load(); p != nil {
			cp := *p
			c.pages[k].Store(&cp)
		}
	}
	return c
}

// ReadIndex loads a disk's index (verified) from its key in a DiskRecord.
// The index is new and the caller's to change.
func (r *Repository) ReadIndex(ctx context.Context, key string) (*Index, error) {
	return r.readIndex(ctx, key, nil)
}

// DiskReader reads one disk of a restore point. Every chunk is verified
// against its id; zero slots read as zeros without I/O.
type DiskReader struct {
	r       *Repository
	ctx     context.Context // from OpenDisk, for ReadAt
	pointID string
	disk    DiskRecord
	idx     *Index

	mu      sync.Mutex
	cacheID ChunkID // the last chunk ReadAt decoded, for small sequential reads
	cache   []byte
}

// OpenDisk opens disk diskID of point m for reading. ReadAt uses ctx for
// its I/O (io.ReaderAt has no context), so ctx must outlive the reads.
func (r *Repository) OpenDisk(ctx context.Context, m *Manifest, diskID string) (*DiskReader, error) {
	return r.openDisk(ctx, m, diskID)
}

// ReadAt implements io.ReaderAt. Corruption gives an error wrapping
// ErrCorrupt that names the point, disk, offset and chunk.
func (d *DiskReader) ReadAt(p []byte, off int64) (int, error) {
	return d.readAt(p, off)
}

// Size is the disk's size.
func (d *DiskReader) Size() int64 {
	return d.disk.Size
}

// Index is the disk's index (do not modify).
func (d *DiskReader) Index() *Index {
	return d.idx
}

// ReadChunk appends slot i's plaintext (verified; zeros for a zero slot;
// the last slot may be short) to dst.
func (d *DiskReader) ReadChunk(ctx context.Context, i int, dst []byte) ([]byte, error) {
	return d.readChunk(ctx, i, dst)
}

var _ io.ReaderAt = (*DiskReader)(nil)

// PointWriter builds one restore point. It holds a lease in the bucket so
// that garbage collection never removes chunks it has written or reuses.
// Call Commit or Abort exactly once.
type PointWriter struct {
	r     *Repository
	lease *lease
	base  *Manifest

	mu    sync.RWMutex
	known map[ChunkID]struct{} // chunks known to be stored: from the base and from this writer
	pages map[ChunkID]struct{} // index pages known to be stored
	// probed are ids this writer found already in the bucket (neither
	// written by it nor known from its base): GC learns of them through the
	// lease's refs object at Commit.
	probedMu sync.Mutex
	probed   []ChunkID

	codec compress.Codec // nil: the repository's

	doneMu sync.Mutex
	done   bool
}

// NewPointWriter starts a restore point. base, if not nil, is the previous
// point of the same VM: its chunk ids are kept in memory so PutChunk does
// not ask the bucket about them.
func (r *Repository) NewPointWriter(ctx context.Context, base *Manifest) (*PointWriter, error) {
	return r.newPointWriter(ctx, base)
}

// SetCodec makes the writer store its new chunks with the codec named
// (compress.Names), instead of the repository's, as a backup plan's
// compression setting asks. Call it before the first PutChunk. Readers need
// no setting: every stored object names its codec.
func (w *PointWriter) SetCodec(name string) error {
	c, err := compress.Lookup(name)
	if err != nil {
		return fmt.Errorf("point writer: codec %q: %w", name, err)
	}
	w.codec = c
	return nil
}

// PutResult says what PutChunk did.
type PutResult struct {
	New    bool  // the chunk was uploaded (not already in the repository)
	Stored int64 // bytes written to the bucket (0 if not new)
}

// PutChunk stores a chunk under id (which the caller computed with
// HashChunk) unless the repository has it. p may be reused when it returns.
// Safe for concurrent use. All-zero chunks must not be passed (use
// ZeroChunk in the index instead).
func (w *PointWriter) PutChunk(ctx context.Context, id ChunkID, p []byte) (PutResult, error) {
	return w.putChunk(ctx, id, p)
}

// Commit writes the indexes (one per disk, keyed by DiskRecord.ID) and then
// the manifest, which makes the point exist. It fills m.ID, m.Created (if
// zero), m.ChunkSize and each DiskRecord.Index.
func (w *PointWriter) Commit(ctx context.Context, m *Manifest, indexes map[string]*Index) error {
	return w.commit(ctx, m, indexes)
}

// Abort gives up the point and releases the lease; chunks already written
// are left for GC. Calling it after Commit is a no-op.
func (w *PointWriter) Abort(ctx context.Context) error {
	return w.abort(ctx)
}

// GCOptions tune garbage collection. A nil *GCOptions means the defaults.
type GCOptions struct {
	// DryRun reports what would be removed without removing it.
	DryRun bool
	// Grace: objects younger than this are never removed, whatever the
	// leases say; 0 means DefaultGrace.
	Grace time.Duration
}

// GCReport says what garbage collection found and did.
type GCReport struct {
	ChunksRemoved int   // or that would be removed, on a dry run
	PagesRemoved  int   // index pages likewise
	BytesFreed    int64 // stored bytes of what was (or would be) removed
	ChunksKept    int
	// Skipped, if not empty, says why nothing was removed this time (a
	// condition under which removing could break an in-flight backup).
	Skipped string
}

// GC removes chunks and index pages that no committed restore point
// references, without touching anything an in-flight PointWriter may use.
func (r *Repository) GC(ctx context.Context, opts *GCOptions) (*GCReport, error) {
	return r.gc(ctx, opts)
}

// VerifyOptions choose how deep Verify looks. nil means a fast verify.
type VerifyOptions struct {
	// Full reads and re-hashes every referenced chunk; otherwise Verify
	// checks that each one exists.
	Full bool
}

// VerifyReport lists every problem found; it is empty for a healthy repository.
type VerifyReport struct {
	Points   int // restore points checked
	Chunks   int // distinct chunks checked
	Problems []Problem
}

// Problem is one missing or corrupt object, located as precisely as known.
type Problem struct {
	PointID string
	DiskID  string
	Offset  int64   // byte offset of the chunk in the disk; -1 if not a chunk
	Chunk   ChunkID // zero if not a chunk
	Key     string  // the object's key
	Err     error   // wraps ErrNotFound or ErrCorrupt
}

// Verify checks every committed restore point and never stops at the
// first problem.
func (r *Repository) Verify(ctx context.Context, opts *VerifyOptions) (*VerifyReport, error) {
	return r.verify(ctx, opts)
}
