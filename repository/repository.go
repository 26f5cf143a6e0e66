package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/fileblob" // file:// URLs
	_ "gocloud.dev/blob/memblob"  // mem:// URLs
	_ "gocloud.dev/blob/s3blob"   // s3:// URLs
	"gocloud.dev/gcerrors"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/internal/exclusive"
	"github.com/vmbackup/vmbackup/internal/retry"
)

// FormatVersion is the on-bucket format this code writes and the newest it
// reads. Open refuses a repository whose config says more (ErrVersion).
const FormatVersion = 1

// Chunk size bounds (Config.ChunkSize must be a power of two in between).
const (
	MinChunkSize = 64 << 10
	MaxChunkSize = 16 << 20
)

// Defaults for Options fields left zero.
const (
	DefaultConcurrency = 8
	DefaultLeaseTTL    = 15 * time.Minute
	// DefaultGrace is GCOptions.Grace when zero: objects younger than this
	// are never removed.
	DefaultGrace = time.Hour
)

// ErrConflict is wrapped when a conditional write finds the object already
// there (a manifest or lease id taken by someone else).
var ErrConflict = errors.New("repository: object already exists")

const configKey = "config"

func (o *Options) withDefaults() Options {
	var v Options
	if o != nil {
		v = *o
	}
	if v.Now == nil {
		v.Now = time.Now
	}
	if v.Concurrency <= 0 {
		v.Concurrency = DefaultConcurrency
	}
	if v.LeaseTTL <= 0 {
		v.LeaseTTL = DefaultLeaseTTL
	}
	return v
}

// openURL opens the bucket of a gocloud URL. file:// URLs get metadata=skip
// and no_tmp_dir (no .attrs sidecars, temp files beside their target so the
// final rename never crosses filesystems) unless the URL sets them; create
// adds create_dir. It returns the bucket's local directory for file:// URLs.
func openURLBucket(ctx context.Context, rawURL string, create bool) (*blob.Bucket, string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("parse repository url: %w", err)
	}
	localDir := ""
	if u.Scheme == "file" {
		q := u.Query()
		if !q.Has("metadata") {
			q.Set("metadata", "skip")
		}
		if !q.Has("no_tmp_dir") {
			q.Set("no_tmp_dir", "true")
		}
		if create && !q.Has("create_dir") {
			q.Set("create_dir", "true")
		}
		u.RawQuery = q.Encode()
		localDir = filepath.FromSlash(u.Path)
		if !create {
			if _, err := os.Stat(localDir); errors.Is(err, fs.ErrNotExist) {
				return nil, "", fmt.Errorf("open %s: %w", rawURL, ErrNoRepository)
			}
		}
	}
	b, err := blob.OpenBucket(ctx, u.String())
	if err != nil {
		return nil, "", fmt.Errorf("open bucket %s: %w", rawURL, err)
	}
	return b, localDir, nil
}

func initURL(ctx context.Context, rawURL string, opts *InitOptions) (*Repository, error) {
	b, dir, err := openURLBucket(ctx, rawURL, true)
	if err != nil {
		return nil, err
	}
	r, err := initBucket(ctx, b, dir, true, opts)
	if err != nil {
		b.Close()
		return nil, err
	}
	return r, nil
}

func openURL(ctx context.Context, rawURL string, opts *Options) (*Repository, error) {
	b, dir, err := openURLBucket(ctx, rawURL, false)
	if err != nil {
		return nil, err
	}
	r, err := openBucket(ctx, b, dir, true, opts)
	if err != nil {
		b.Close()
		return nil, err
	}
	return r, nil
}

// validateConfig checks a config read from the bucket or made by Init.
func validateConfig(c Config) error {
	switch {
	case c.Version < 1:
		return fmt.Errorf("config: version %d: %w", c.Version, ErrCorrupt)
	case c.Version > FormatVersion:
		return fmt.Errorf("config: format version %d, this code reads up to %d: %w", c.Version, FormatVersion, ErrVersion)
	case c.ID == "":
		return fmt.Errorf("config: empty id: %w", ErrCorrupt)
	case c.ChunkSize < MinChunkSize || c.ChunkSize > MaxChunkSize || c.ChunkSize&(c.ChunkSize-1) != 0:
		return fmt.Errorf("config: chunk_size %d is not a power of two in [%d, %d]: %w", c.ChunkSize, MinChunkSize, MaxChunkSize, ErrCorrupt)
	}
	if _, err := compress.Lookup(c.Codec); err != nil {
		return fmt.Errorf("config: codec %q: %w: %w", c.Codec, err, ErrCorrupt)
	}
	return nil
}

func newRepository(b *blob.Bucket, dir string, owns bool, cfg Config, o *Options) (*Repository, error) {
	opts := o.withDefaults()
	name := cfg.Codec
	if opts.Codec != "" {
		name = opts.Codec
	}
	c, err := compress.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("codec %q: %w", name, err)
	}
	return &Repository{bucket: b, ownsBucket: owns, localDir: dir, cfg: cfg, codec: c, opts: opts, flush: flusher{dir: dir}}, nil
}

func initBucket(ctx context.Context, b *blob.Bucket, dir string, owns bool, opts *InitOptions) (*Repository, error) {
	var io InitOptions
	if opts != nil {
		io = *opts
	}
	cfg := Config{Version: FormatVersion, ID: randomHex(16), ChunkSize: io.ChunkSize, Codec: io.Codec}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.Codec == "" {
		cfg.Codec = compress.Default
	}
	if err := validateConfig(cfg); err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	r, err := newRepository(b, dir, owns, cfg, &io.Options)
	if err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := r.putIfNotExist(ctx, configKey, data); err != nil {
		if errors.Is(err, ErrConflict) {
			return nil, fmt.Errorf("init repository: %w", ErrExists)
		}
		return nil, fmt.Errorf("init repository: %w", err)
	}
	return r, nil
}

func openBucket(ctx context.Context, b *blob.Bucket, dir string, owns bool, opts *Options) (*Repository, error) {
	var data []byte
	err := retry.Do(ctx, func(ctx context.Context) (err error) {
		data, err = b.ReadAll(ctx, configKey)
		return err
	})
	if gcerrors.Code(err) == gcerrors.NotFound {
		return nil, fmt.Errorf("open repository: %w", ErrNoRepository)
	}
	if err != nil {
		return nil, fmt.Errorf("open repository: read config: %w", err)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("open repository: config: %w: %w", err, ErrCorrupt)
	}
	if err := validateConfig(cfg); err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	r, err := newRepository(b, dir, owns, cfg, opts)
	if err != nil {
		return nil, fmt.Errorf("open repository: %w", err)
	}
	return r, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// objectError wraps a bucket error for key, mapping NotFound to ErrNotFound.
func objectError(op, key string, err error) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("%s %s: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("%s %s: %w", op, key, err)
}

var writeOpts = &blob.WriterOptions{ContentType: "application/octet-stream"}

// get reads a whole object (retrying transient errors).
func (r *Repository) get(ctx context.Context, key string) ([]byte, error) {
	var data []byte
	err := retry.Do(ctx, func(ctx context.Context) (err error) {
		data, err = r.bucket.ReadAll(ctx, key)
		return err
	})
	if err != nil {
		return nil, objectError("read", key, err)
	}
	return data, nil
}

// put writes a whole object, replacing any. It skips the MD5 that
// Bucket.WriteAll computes (twice: once for ContentMD5, once to check it):
// every object is verified on read against its own content hash or checksum,
// and MD5 cost 12-18 % of a full backup's CPU.
func (r *Repository) put(ctx context.Context, key string, data []byte) error {
	err := retry.Do(ctx, func(ctx context.Context) error {
		// Cancelling wctx before Close aborts the write, so a failed
		// Write never leaves a partial object under a chunk's key.
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		w, err := r.bucket.NewWriter(wctx, key, writeOpts)
		if err != nil {
			return err
		}
		if _, err := w.Write(data); err != nil {
			cancel()
			w.Close()
			return err
		}
		return w.Close()
	})
	if err != nil {
		return objectError("write", key, err)
	}
	return nil
}

// exists reports whether key is there.
func (r *Repository) exists(ctx context.Context, key string) (bool, error) {
	var ok bool
	err := retry.Do(ctx, func(ctx context.Context) (err error) {
		ok, err = r.bucket.Exists(ctx, key)
		return err
	})
	if err != nil {
		return false, objectError("stat", key, err)
	}
	return ok, nil
}

// del removes key; a missing key is not an error.
func (r *Repository) del(ctx context.Context, key string) error {
	err := retry.Do(ctx, func(ctx context.Context) error {
		return r.bucket.Delete(ctx, key)
	})
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return objectError("delete", key, err)
	}
	return nil
}

// putIfNotExist writes key only if no object has that key, atomically even
// between processes: ErrConflict if one does. On S3, GCS and Azure the
// store's conditional write (If-None-Match) decides. fileblob's IfNotExist
// is a stat and a rename under a mutex of its own process, which two
// processes can both pass; for file:// repositories the object is written
// to a temp file beside the target and published with link(2), which fails
// if the target exists.
func (r *Repository) putIfNotExist(ctx context.Context, key string, data []byte) error {
	if r.localDir != "" {
		if err := exclusive.Create(filepath.Join(r.localDir, filepath.FromSlash(key)), data); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("write %s: %w", key, ErrConflict)
			}
			return fmt.Errorf("write %s: %w", key, err)
		}
		return nil
	}
	err := retry.Do(ctx, func(ctx context.Context) error {
		return r.bucket.WriteAll(ctx, key, data, &blob.WriterOptions{ContentType: "application/octet-stream", IfNotExist: true})
	})
	if gcerrors.Code(err) == gcerrors.FailedPrecondition {
		return fmt.Errorf("write %s: %w", key, ErrConflict)
	}
	if err != nil {
		return objectError("write", key, err)
	}
	return nil
}

// list calls fn for every object under prefix, in pages.
func (r *Repository) list(ctx context.Context, prefix string, fn func(*blob.ListObject) error) error {
	token := blob.FirstPageToken
	for {
		var objs []*blob.ListObject
		var next []byte
		var err error
		// fileblob lists a directory and then stats each entry, so an object
		// deleted in between fails the whole page with NotFound: list again.
		for attempt := 0; attempt < 10; attempt++ {
			err = retry.Do(ctx, func(ctx context.Context) (err error) {
				objs, next, err = r.bucket.ListPage(ctx, token, 1000, &blob.ListOptions{Prefix: prefix})
				return err
			})
			if gcerrors.Code(err) != gcerrors.NotFound {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		for _, o := range objs {
			if o.IsDir || strings.HasSuffix(o.Key, ".tmp") {
				continue
			}
			if err := fn(o); err != nil {
				return err
			}
		}
		if len(next) == 0 {
			return nil
		}
		token = next
	}
}

type blobListObject = blob.ListObject

var retryDo = retry.Do
