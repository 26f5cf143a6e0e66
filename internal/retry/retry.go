// Package retry retries operations on object storage that failed with a
// transient error, with capped exponential backoff and jitter. It is the one
// place in the repository where retrying happens: callers wrap each bucket
// call in Do and never loop themselves.
//
// Transient means the gocloud.dev error code is ResourceExhausted
// (throttling), Internal (a server-side failure: 5xx) or DeadlineExceeded
// (only while the caller's context is still live: a deadline of the
// caller's own is final). gocloud has no Unavailable code; drivers report
// unavailability as Internal or as a deadline. Every other error, and any
// error once ctx is done, is returned at once.
package retry

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"gocloud.dev/gcerrors"
)

// Policy bounds retrying. The zero value is not useful; start from Default.
type Policy struct {
	// Attempts is the total number of tries, the first included.
	Attempts int
	// Initial is the wait after the first failure; it doubles per attempt.
	Initial time.Duration
	// Max caps one wait.
	Max time.Duration
}

// Default is the policy of the repository: 6 tries within about 10 s.
var Default = Policy{Attempts: 6, Initial: 100 * time.Millisecond, Max: 4 * time.Second}

// Transient reports whether err is worth retrying while ctx is live.
func Transient(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	switch gcerrors.Code(err) {
	case gcerrors.ResourceExhausted, gcerrors.Internal, gcerrors.DeadlineExceeded:
		return true
	}
	return false
}

// Do calls op until it succeeds, fails with a non-transient error, the
// attempts run out or ctx is done. It returns op's last error (or ctx's
// error if ctx ended while waiting), so errors.Is and gcerrors.Code still
// see the cause.
func (p Policy) Do(ctx context.Context, op func(ctx context.Context) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	wait := p.Initial
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || attempt >= p.Attempts || !Transient(ctx, err) {
			return err
		}
		// Full jitter over [wait/2, wait).
		d := wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, p.Max)
	}
}

// Do runs op under the Default policy.
func Do(ctx context.Context, op func(ctx context.Context) error) error {
	return Default.Do(ctx, op)
}
