package retry

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"gocloud.dev/blob/memblob"
	"gocloud.dev/gcerrors"
)

var fast = Policy{Attempts: 4, Initial: time.Microsecond, Max: time.Microsecond}

// codeErr returns an error with a gocloud code, as a bucket would.
func codeErr(t *testing.T, code gcerrors.ErrorCode) error {
	t.Helper()
	if code == gcerrors.NotFound {
		b := memblob.OpenBucket(nil)
		defer b.Close()
		_, err := b.ReadAll(context.Background(), "missing")
		return err
	}
	return fakeCoded{code}
}

type fakeCoded struct{ code gcerrors.ErrorCode }

func (e fakeCoded) Error() string { return fmt.Sprint("fake ", e.code) }

func TestDo(t *testing.T) {
	tests := []struct {
		name      string
		err       error
		wantCalls int
	}{
		{"success", nil, 1},
		{"permanent", errors.New("boom"), 1},
		{"not found", nil, 1}, // filled below
		{"canceled", context.Canceled, 1},
	}
	tests[2].err = codeErr(t, gcerrors.NotFound)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := fast.Do(context.Background(), func(context.Context) error { calls++; return tc.err })
			if !errors.Is(err, tc.err) && err != tc.err {
				t.Errorf("Do = %v, want %v", err, tc.err)
			}
			if calls != tc.wantCalls {
				t.Errorf("%d calls, want %d", calls, tc.wantCalls)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	got := map[string]bool{}
	for name, c := range map[string]struct {
		ctx context.Context
		err error
	}{
		"nil":                {live, nil},
		"plain":              {live, errors.New("x")},
		"not found":          {live, codeErr(t, gcerrors.NotFound)},
		"deadline, ctx live": {live, context.DeadlineExceeded},
		"deadline, ctx done": {done, context.DeadlineExceeded},
		"canceled":           {live, context.Canceled},
	} {
		got[name] = Transient(c.ctx, c.err)
	}
	want := map[string]bool{
		"nil": false, "plain": false, "not found": false,
		"deadline, ctx live": true, "deadline, ctx done": false, "canceled": false,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Transient (-want +got):\n%s", diff)
	}
}

func TestDoRetriesTransientThenGivesUp(t *testing.T) {
	calls := 0
	err := fast.Do(context.Background(), func(context.Context) error { calls++; return context.DeadlineExceeded })
	if !errors.Is(err, context.DeadlineExceeded) || calls != fast.Attempts {
		t.Errorf("Do = %v after %d calls, want DeadlineExceeded after %d", err, calls, fast.Attempts)
	}
	calls = 0
	err = fast.Do(context.Background(), func(context.Context) error {
		calls++
		if calls < 3 {
			return context.DeadlineExceeded
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Errorf("Do = %v after %d calls, want success on the third", err, calls)
	}
}

func TestDoReturnsAtOnceWhenContextIsDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls := 0
	err := fast.Do(ctx, func(context.Context) error { calls++; return nil })
	if !errors.Is(err, context.Canceled) || calls != 0 {
		t.Errorf("Do = %v after %d calls, want context.Canceled and no call", err, calls)
	}
}

func TestDoStopsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	slow := Policy{Attempts: 10, Initial: time.Hour, Max: time.Hour}
	calls := 0
	time.AfterFunc(10*time.Millisecond, cancel) // ends while the policy waits an hour
	err := slow.Do(ctx, func(context.Context) error {
		calls++
		return context.DeadlineExceeded
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("Do = %v after %d calls, want context.Canceled after 1", err, calls)
	}
}
