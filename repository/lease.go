package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// leaseRecord is the stored form of a lease (leases/<id>, JSON).
type leaseRecord struct {
	ID      string    `json:"id"`
	Host    string    `json:"host,omitempty"`
	PID     int       `json:"pid,omitempty"`
	Started time.Time `json:"started"`
	Expires time.Time `json:"expires"`
	// Base is the id of the point the writer dedups against; GC marks it.
	Base string `json:"base,omitempty"`
}

// lease is a PointWriter's claim in the bucket, refreshed in the background
// until released.
type lease struct {
	r    *Repository
	key  string
	rec  leaseRecord
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu       sync.Mutex
	released bool
}

func (r *Repository) acquireLease(ctx context.Context, base string) (*lease, error) {
	now := r.opts.Now().UTC()
	host, _ := os.Hostname()
	rec := leaseRecord{
		ID:      now.Format(pointIDLayout) + "-" + randomHex(8),
		Host:    host,
		PID:     os.Getpid(),
		Started: now,
		Expires: now.Add(r.opts.LeaseTTL),
		Base:    base,
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	l := &lease{r: r, key: leasePrefix + rec.ID, rec: rec}
	if err := r.putIfNotExist(ctx, l.key, data); err != nil {
		return nil, fmt.Errorf("acquire lease: %w", err)
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.stop = cancel
	l.wg.Add(1)
	go l.refreshLoop(rctx)
	return l, nil
}

// refreshLoop extends the lease every LeaseTTL/3 until stopped.
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
	rec := l.rec
	rec.Expires = l.r.opts.Now().UTC().Add(l.r.opts.LeaseTTL)
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return l.r.put(ctx, l.key, data)
}

// release stops refreshing and deletes the lease.
func (l *lease) release(ctx context.Context) error {
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.released {
		return nil
	}
	l.released = true
	if err := l.r.del(context.WithoutCancel(ctx), l.key); err != nil {
		return fmt.Errorf("release lease: %w", err)
	}
	return nil
}

// liveLeases returns the leases that have not expired at now. Unreadable
// lease objects count as live from the time they were written (their
// ModTime), for LeaseTTL: GC errs on the side of keeping.
func (r *Repository) liveLeases(ctx context.Context, now time.Time) ([]leaseRecord, error) {
	var out []leaseRecord
	var keys []string
	mod := map[string]time.Time{}
	if err := r.list(ctx, leasePrefix, func(o *blobListObject) error {
		keys = append(keys, o.Key)
		mod[o.Key] = o.ModTime
		return nil
	}); err != nil {
		return nil, err
	}
	for _, k := range keys {
		b, err := r.get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var rec leaseRecord
		if err := json.Unmarshal(b, &rec); err != nil || rec.Started.IsZero() {
			rec = leaseRecord{ID: k, Started: mod[k], Expires: mod[k].Add(r.opts.LeaseTTL)}
		}
		if rec.Expires.After(now) {
			out = append(out, rec)
		}
	}
	return out, nil
}
