package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"gocloud.dev/blob"
)

// leaseRecord is the stored form of a lease (leases/<id>, JSON).
type leaseRecord struct {
	ID   string `json:"id"`
	Host string `json:"host,omitempty"`
	PID  int    `json:"pid,omitempty"`
	// Started is the ModTime the store gave the lease object when it was
	// created: the bucket's clock, the one object ModTimes are compared to.
	Started time.Time `json:"started"`
	// Base is the id of the point the writer dedups against; GC marks it.
	Base string `json:"base,omitempty"`
}

const refsSuffix = ".refs"

// lease is a claim in the bucket (a PointWriter's lease or the GC lock),
// refreshed in the background until released: a claim whose object has not
// been rewritten for LeaseTTL is dead.
type lease struct {
	r    *Repository
	key  string
	rec  leaseRecord
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu       sync.Mutex
	released bool
	refs     bool // a refs object was written
}

// acquire creates a claim at key (ErrConflict if one exists) and starts
// refreshing it.
func (r *Repository) acquire(ctx context.Context, key, id, base string) (*lease, error) {
	host, _ := os.Hostname()
	rec := leaseRecord{ID: id, Host: host, PID: os.Getpid(), Base: base}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if err := r.putIfNotExist(ctx, key, data); err != nil {
		return nil, err
	}
	l := &lease{r: r, key: key, rec: rec}
	attrs, err := r.attributes(ctx, key)
	if err != nil {
		r.del(context.WithoutCancel(ctx), key)
		return nil, err
	}
	l.rec.Started = attrs.ModTime
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stop = cancel
	l.wg.Add(1)
	go l.refreshLoop(rctx)
	return l, nil
}

func (r *Repository) acquireLease(ctx context.Context, base string) (*lease, error) {
	id := r.opts.Now().UTC().Format(pointIDLayout) + "-" + randomHex(8)
	l, err := r.acquire(ctx, leasePrefix+id, id, base)
	if err != nil {
		return nil, fmt.Errorf("acquire lease: %w", err)
	}
	return l, nil
}

func (r *Repository) attributes(ctx context.Context, key string) (*blob.Attributes, error) {
	var a *blob.Attributes
	err := retryDo(ctx, func(ctx context.Context) (err error) {
		a, err = r.bucket.Attributes(ctx, key)
		return err
	})
	if err != nil {
		return nil, objectError("stat", key, err)
	}
	return a, nil
}

// refreshLoop rewrites the claim every LeaseTTL/3 until stopped.
func (l *lease) refreshLoop(ctx context.Context) {
	defer l.wg.Done()
	t := time.NewTicker(l.r.opts.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := l.refresh(ctx); err != nil && ctx.Err() == nil {
				slog.WarnContext(ctx, "repository: refreshing lease", "lease", l.key, "err", err)
			}
		}
	}
}

func (l *lease) refresh(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	data, err := json.Marshal(l.rec)
	if err != nil {
		return err
	}
	return l.r.put(ctx, l.key, data)
}

// writeRefs stores the ids the writer uses without having written them, so
// that a GC that sees the lease keeps them.
func (l *lease) writeRefs(ctx context.Context, ids []ChunkID) error {
	b := make([]byte, 0, 32*len(ids))
	for _, id := range ids {
		b = append(b, id[:]...)
	}
	l.mu.Lock()
	l.refs = true
	l.mu.Unlock()
	return l.r.put(ctx, l.key+refsSuffix, b)
}

// release stops refreshing and deletes the claim (and its refs).
func (l *lease) release(ctx context.Context) error {
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	ctx = context.WithoutCancel(ctx)
	if l.refs {
		if err := l.r.del(ctx, l.key+refsSuffix); err != nil {
			return fmt.Errorf("release lease: %w", err)
		}
	}
	if err := l.r.del(ctx, l.key); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

// liveLease is a lease as GC sees it.
type liveLease struct {
	key     string
	started time.Time // zero if the record is unreadable: keep everything
	base    string
	refs    []ChunkID
}

// liveLeases returns the leases whose object was written less than
// LeaseTTL before now (a time on the bucket's clock), with their refs.
func (r *Repository) liveLeases(ctx context.Context, now time.Time) ([]liveLease, error) {
	var out []liveLease
	hasRefs := map[string]bool{}
	if err := r.list(ctx, leasePrefix, func(o *blobListObject) error {
		if k, ok := strings.CutSuffix(o.Key, refsSuffix); ok {
			hasRefs[k] = true
			return nil
		}
		if o.ModTime.Add(r.opts.LeaseTTL).After(now) {
			out = append(out, liveLease{key: o.Key})
		}
		return nil
	}); err != nil {
		return nil, err
	}
	for i := range out {
		l := &out[i]
		b, err := r.get(ctx, l.key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile: its point is committed or abandoned
		}
		if err != nil {
			return nil, err
		}
		var rec leaseRecord
		if json.Unmarshal(b, &rec) == nil {
			l.started, l.base = rec.Started, rec.Base
		}
		if !hasRefs[l.key] {
			continue
		}
		b, err = r.get(ctx, l.key+refsSuffix)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for len(b) >= 32 {
			var id ChunkID
			copy(id[:], b)
			l.refs = append(l.refs, id)
			b = b[32:]
		}
	}
	return out, nil
}
