package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"

	"github.com/vmbackup/vmbackup/compress"
	"github.com/vmbackup/vmbackup/internal/retry"
)

// Key prefixes of the on-bucket format (see the package doc).
const (
	chunkPrefix = "chunks/"
	pagePrefix  = "pages/"
	rootPrefix  = "index/"
	pointPrefix = "points/"
	leasePrefix = "leases/"
)

// fanoutKey returns prefix + hh/ + hex(id), where hh is the first byte of
// the id: 256 sub-prefixes spread load on object stores that partition by
// key prefix and keep file:// directories small.
func fanoutKey(prefix string, id ChunkID) string {
	var buf [len("chunks/") + 3 + 64 + 8]byte
	b := append(buf[:0], prefix...)
	b = hex.AppendEncode(b, id[:1])
	b = append(b, '/')
	b = hex.AppendEncode(b, id[:])
	return string(b)
}

// ChunkKey is the bucket key of chunk id: "chunks/<hh>/<64 hex>".
func ChunkKey(id ChunkID) string { return fanoutKey(chunkPrefix, id) }

// pageKey is the key of an index page.
func pageKey(id ChunkID) string { return fanoutKey(pagePrefix, id) }

// rootKey is the key of an index root.
func rootKey(id ChunkID) string { return rootPrefix + id.String() }

// ParseChunkID parses a hex chunk id.
func ParseChunkID(s string) (ChunkID, error) {
	var id ChunkID
	if len(s) != 64 {
		return id, fmt.Errorf("chunk id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// idFromFanoutKey returns the id of a key made by fanoutKey under prefix.
func idFromFanoutKey(prefix, key string) (ChunkID, bool) {
	if len(key) != len(prefix)+3+64 {
		return ChunkID{}, false
	}
	id, err := ParseChunkID(key[len(prefix)+3:])
	if err != nil || key[len(prefix):len(prefix)+2] != id.String()[:2] {
		return ChunkID{}, false
	}
	return id, true
}

func (r *Repository) getBuf() *[]byte {
	if p, ok := r.encPool.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 0, r.cfg.ChunkSize+r.cfg.ChunkSize/16+64)
	return &b
}

// storeObject encodes plaintext and writes it under key; it returns the
// stored size. The encode buffer comes from a pool.
func (r *Repository) storeObject(ctx context.Context, key string, plain []byte) (int64, error) {
	return r.storeEncoded(ctx, key, r.codec, plain)
}

// storeEncoded is storeObject with codec c.
func (r *Repository) storeEncoded(ctx context.Context, key string, c compress.Codec, plain []byte) (int64, error) {
	bp := r.getBuf()
	enc := compress.Encode((*bp)[:0], c, plain)
	err := r.put(ctx, key, enc)
	n := int64(len(enc))
	*bp = enc[:0]
	r.encPool.Put(bp)
	return n, err
}

// putBuf returns a buffer from getBuf (or getPooled) to the pool, unless
// it grew far beyond a chunk's size (an index root), which is dropped.
func (r *Repository) putBuf(bp *[]byte) {
	if cap(*bp) > 2*r.cfg.ChunkSize+1024 {
		return
	}
	*bp = (*bp)[:0]
	r.encPool.Put(bp)
}

// getPooled reads the whole object key (retrying transient errors) into a
// buffer from the pool, which the caller returns with putBuf. It reads the
// object's known size in one go: no growing buffer and no allocation per
// object, as io.ReadAll would make (measured: 5-7 % of a restore's CPU).
// An object larger than limit bytes is corrupt.
func (r *Repository) getPooled(ctx context.Context, key string, limit int64) (*[]byte, error) {
	bp := r.getBuf()
	var tooBig int64
	err := retry.Do(ctx, func(ctx context.Context) error {
		rd, err := r.bucket.NewReader(ctx, key, nil)
		if err != nil {
			return err
		}
		defer rd.Close()
		n := rd.Size()
		if n < 0 || n > limit {
			tooBig = n
			return nil
		}
		b := slices.Grow((*bp)[:0], int(n))[:n]
		if _, err := io.ReadFull(rd, b); err != nil {
			return err
		}
		*bp = b
		return nil
	})
	if err != nil {
		r.putBuf(bp)
		return nil, objectError("read", key, err)
	}
	if tooBig != 0 {
		r.putBuf(bp)
		return nil, fmt.Errorf("read %s: %d bytes, more than the %d an object of its kind may have: %w", key, tooBig, limit, ErrCorrupt)
	}
	return bp, nil
}

// loadObject reads key, decodes it (at most maxSize bytes) appending to dst
// and checks that the plaintext hashes to id. Corruption wraps ErrCorrupt,
// absence ErrNotFound.
func (r *Repository) loadObject(ctx context.Context, key string, id ChunkID, maxSize int, dst []byte) ([]byte, error) {
	// Every codec stores incompressible data raw, so an object is at most
	// its tag byte longer than its plaintext; the rest is generous slack.
	bp, err := r.getPooled(ctx, key, int64(maxSize)+int64(maxSize)/8+1024)
	if err != nil {
		return dst, err
	}
	defer r.putBuf(bp)
	return decodeObject(key, id, *bp, maxSize, dst)
}

// decodeObject appends the plaintext of enc, the stored object key, to dst
// and checks that it hashes to id (so the codec's own checksum is not
// checked again). Corruption wraps ErrCorrupt; on error dst is returned.
func decodeObject(key string, id ChunkID, enc []byte, maxSize int, dst []byte) ([]byte, error) {
	start := len(dst)
	out, err := compress.DecodeWithoutChecksum(dst, enc, maxSize)
	if err != nil {
		return dst, fmt.Errorf("decode %s: %w: %w", key, err, ErrCorrupt)
	}
	if sha256.Sum256(out[start:]) != id {
		return dst, fmt.Errorf("%s: content does not match its id: %w", key, ErrCorrupt)
	}
	return out, nil
}

// readChunk appends chunk id's verified plaintext to dst.
func (r *Repository) readChunk(ctx context.Context, id ChunkID, dst []byte) ([]byte, error) {
	return r.loadObject(ctx, ChunkKey(id), id, r.cfg.ChunkSize, dst)
}

// putChunk is PointWriter.PutChunk.
func (w *PointWriter) putChunk(ctx context.Context, id ChunkID, p []byte) (PutResult, error) {
	if err := ctx.Err(); err != nil {
		return PutResult{}, err
	}
	if len(p) > w.r.cfg.ChunkSize {
		return PutResult{}, fmt.Errorf("put chunk %s: %d bytes exceed the chunk size %d", id, len(p), w.r.cfg.ChunkSize)
	}
	if id.IsZero() {
		return PutResult{}, fmt.Errorf("put chunk: the zero id is reserved for all-zero chunks, which are not stored")
	}
	if w.isDone() {
		return PutResult{}, fmt.Errorf("put chunk %s: point writer already committed or aborted", id)
	}
	w.mu.RLock()
	_, ok := w.known[id]
	w.mu.RUnlock()
	if ok {
		return PutResult{}, nil
	}
	key := ChunkKey(id)
	there, err := w.r.exists(ctx, key)
	if err != nil {
		return PutResult{}, fmt.Errorf("put chunk %s: %w", id, err)
	}
	var res PutResult
	if there {
		w.probe(id)
	} else {
		c := w.codec
		if c == nil {
			c = w.r.codec
		}
		n, err := w.r.storeEncoded(ctx, key, c, p)
		if err != nil {
			return PutResult{}, fmt.Errorf("put chunk %s: %w", id, err)
		}
		res = PutResult{New: true, Stored: n}
		if w.r.localDir != "" {
			w.r.flush.wrote(n)
		}
	}
	w.mu.Lock()
	w.known[id] = struct{}{}
	w.mu.Unlock()
	return res, nil
}
