package hypervisortest

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
)

// mark is what the suite remembers of a snapshot whose tokens it will use
// later: the tokens, the content the disks had, and the writes since.
type mark struct {
	name    string
	tokens  []string // per disk
	content *shadow
	writes  [][]span // per disk, writes since the mark
}

func (m *mark) wrote(disk int, off int64, n int) {
	m.writes[disk] = append(m.writes[disk], span{off, off + int64(n)})
}

// trackedSnapshot takes a snapshot whose disks all carry change tokens,
// skipping t if the backend has no change tracking. A backend may start
// tracking only at the first snapshot, so a second one is tried before
// giving up on an empty token.
func (e *env) trackedSnapshot(t *testing.T, vm hypervisor.VM) (hypervisor.Snapshot, []hypervisor.ChangeTracker) {
	t.Helper()
	for attempt := 0; ; attempt++ {
		s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
		var cts []hypervisor.ChangeTracker
		empty := false
		for _, di := range vm.Disks {
			d := e.open(t, s, di.ID)
			ct, ok := d.(hypervisor.ChangeTracker)
			if !ok {
				t.Skip("snapshot disks implement no ChangeTracker")
			}
			if ct.ChangeToken() == "" {
				empty = true
			}
			cts = append(cts, ct)
		}
		if !empty {
			return s, cts
		}
		if err := s.Release(e.ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if attempt == 1 {
			t.Skip("change tracking is not active: ChangeToken is empty on two snapshots in a row")
		}
	}
}

// newMark records the tokens of cts and the current content.
func newMark(name string, cts []hypervisor.ChangeTracker, sh *shadow) *mark {
	m := &mark{name: name, content: sh.clone(), writes: make([][]span, len(cts))}
	for _, ct := range cts {
		m.tokens = append(m.tokens, ct.ChangeToken())
	}
	return m
}

// checkChanges asks cr for the changes since m's token of disk i and checks
// that they cover every byte that differs between m's content and now, and
// (when the harness states a granularity) stay within that granularity of
// the writes made since m.
func (e *env) checkChanges(t *testing.T, what string, cr hypervisor.ChangeReporter, m *mark, i int, size int64, now []byte) {
	t.Helper()
	what = fmt.Sprintf("%s: ChangedExtents(token of %s) of disk %d", what, m.name, i)
	ext, err := cr.ChangedExtents(e.ctx, m.tokens[i])
	if err != nil {
		t.Errorf("%s: %v", what, err)
		return
	}
	if !checkExtents(t, what, ext, size) {
		return
	}
	got := toSpans(ext)
	if miss := uncovered(diffSpans(m.content.disks[i], now), got); len(miss) > 0 {
		t.Errorf("%s = %s misses changed bytes at %s (writes since: %s)", what, fmtSpans(got), fmtSpans(miss), fmtSpans(mergeSpans(m.writes[i])))
	}
	if g := e.h.ChangeGranularity(); g > 0 {
		if extra := uncovered(got, expand(mergeSpans(m.writes[i]), g)); len(extra) > 0 {
			t.Errorf("%s = %s reports %s, more than granularity %d around the writes since (%s)", what, fmtSpans(got), fmtSpans(extra), g, fmtSpans(mergeSpans(m.writes[i])))
		}
	}
}

func testChanges(t *testing.T, e *env) {
	e.run(t, "Random", func(t *testing.T) { testChangesRandom(t, e) })
	e.run(t, "NoWrites", func(t *testing.T) { testChangesNoWrites(t, e) })
	e.run(t, "FailedBackups", func(t *testing.T) { testChangesFailedBackups(t, e) })
	e.run(t, "InvalidTokens", func(t *testing.T) { testChangesInvalidTokens(t, e) })
	e.run(t, "Reset", func(t *testing.T) { testChangesReset(t, e) })
}

// testChangesRandom is the main check of change tracking: rounds of random
// writes, each followed by a snapshot that must report, for the token of
// every earlier successful round, every byte changed since. Rounds 2, 5
// and 6 play failed backups: their snapshot is released and its token
// dropped.
func testChangesRandom(t *testing.T, e *env) {
	vm := e.newVM(t, 4*mib, 1*mib)
	sh := newShadow(vm)
	for range 4 {
		off, p := randWrite(e.rng, vm.Disks[0].Size)
		e.write(t, vm, sh, 0, off, p)
	}
	s, cts := e.trackedSnapshot(t, vm)
	marks := []*mark{newMark("round 0", cts, sh)}
	if err := s.Release(e.ctx); err != nil { // tokens outlive their snapshot
		t.Fatalf("Release: %v", err)
	}
	// The previous round's snapshot stays open through the next round's
	// writes: what it reports must not change with them.
	type answer struct {
		ct   hypervisor.ChangeTracker
		tok  string
		ext  []hypervisor.Extent
		snap hypervisor.Snapshot
	}
	var prev []answer
	const rounds = 8
	for round := 1; round <= rounds; round++ {
		for range 1 + e.rng.IntN(12) {
			d := 0
			if e.rng.IntN(4) == 0 {
				d = 1
			}
			off, p := randWrite(e.rng, vm.Disks[d].Size)
			e.write(t, vm, sh, d, off, p)
			for _, m := range marks {
				m.wrote(d, off, len(p))
			}
		}
		for _, a := range prev {
			ext, err := a.ct.ChangedExtents(e.ctx, a.tok)
			if err != nil {
				t.Fatalf("round %d: ChangedExtents of the previous snapshot: %v", round, err)
			}
			if diff := cmp.Diff(a.ext, ext); diff != "" {
				t.Errorf("round %d: ChangedExtents of the previous snapshot changed with writes made after it (-before +after):\n%s", round, diff)
			}
		}
		if len(prev) > 0 {
			if err := prev[0].snap.Release(e.ctx); err != nil {
				t.Fatalf("Release: %v", err)
			}
			prev = nil
		}
		s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
		if round == 2 || round == 5 || round == 6 {
			// A failed backup: the snapshot is opened, partly read and
			// released; its token is never used.
			d := e.open(t, s, vm.Disks[0].ID)
			d.ReadAt(make([]byte, 64*kib), 0)
			if err := s.Release(e.ctx); err != nil {
				t.Fatalf("Release: %v", err)
			}
			continue
		}
		what := fmt.Sprintf("round %d", round)
		var cts []hypervisor.ChangeTracker
		for i, di := range vm.Disks {
			d := e.open(t, s, di.ID)
			ct, ok := d.(hypervisor.ChangeTracker)
			if !ok {
				t.Fatalf("%s: disk %s of a later snapshot implements no ChangeTracker", what, di.ID)
			}
			cts = append(cts, ct)
			got := readAll(t, what, d, di.Size)
			compareBytes(t, fmt.Sprintf("%s: snapshot content of disk %d", what, i), got, sh.disks[i])
			for _, m := range marks {
				e.checkChanges(t, what, ct, m, i, di.Size, sh.disks[i])
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		for i, ct := range cts {
			tok := marks[len(marks)-1].tokens[i]
			ext, err := ct.ChangedExtents(e.ctx, tok)
			if err != nil {
				t.Fatalf("%s: ChangedExtents: %v", what, err)
			}
			prev = append(prev, answer{ct: ct, tok: tok, ext: ext, snap: s})
		}
		marks = append(marks, newMark(what, cts, sh))
	}
}

func testChangesNoWrites(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib, 1*mib)
	sh := newShadow(vm)
	_, cts := e.trackedSnapshot(t, vm)
	m := newMark("the first snapshot", cts, sh)
	for i, ct := range cts {
		// A snapshot differs in nothing from itself.
		e.checkChanges(t, "same snapshot", ct, m, i, vm.Disks[i].Size, sh.disks[i])
	}
	s := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	for i, di := range vm.Disks {
		ct, ok := e.open(t, s, di.ID).(hypervisor.ChangeTracker)
		if !ok {
			t.Fatalf("disk %s of a later snapshot implements no ChangeTracker", di.ID)
		}
		e.checkChanges(t, "next snapshot, no writes", ct, m, i, di.Size, sh.disks[i])
	}
	// Disks are tracked separately: a write to disk 0 is no change of
	// disk 1.
	e.write(t, vm, sh, 0, 300*kib, fill(5000, 0x33))
	m.wrote(0, 300*kib, 5000)
	s = e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	for i, di := range vm.Disks {
		ct, ok := e.open(t, s, di.ID).(hypervisor.ChangeTracker)
		if !ok {
			t.Fatalf("disk %s of a later snapshot implements no ChangeTracker", di.ID)
		}
		e.checkChanges(t, "write to disk 0 only", ct, m, i, di.Size, sh.disks[i])
	}
}

// testChangesFailedBackups plays the sequence the ChangeTracker doc
// promises to survive: a backup, then backups that fail (snapshot read and
// released, snapshot released unused), then one that must still see
// everything written since the first.
func testChangesFailedBackups(t *testing.T, e *env) {
	vm := e.newVM(t, 2*mib)
	sh := newShadow(vm)
	s0, cts := e.trackedSnapshot(t, vm)
	m := newMark("the last successful backup", cts, sh)
	s0.Release(e.ctx)

	e.write(t, vm, sh, 0, 100*kib, fill(10*kib, 1))
	m.wrote(0, 100*kib, 10*kib)
	// Failed backup 1: changes asked for and partly read, then released.
	s1 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	if ct, ok := e.open(t, s1, vm.Disks[0].ID).(hypervisor.ChangeTracker); ok {
		e.checkChanges(t, "failed backup", ct, m, 0, vm.Disks[0].Size, sh.disks[0])
	}
	if err := s1.Release(e.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}

	e.write(t, vm, sh, 0, 1*mib-1, fill(2, 2))
	m.wrote(0, 1*mib-1, 2)
	// Failed backup 2: released without being opened.
	s2 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	if err := s2.Release(e.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// Failed backup 3: the context was cancelled while it ran.
	if s3, err := e.hv.Snapshot(withCancelled(e.ctx), vm.ID, hypervisor.SnapshotOptions{}); err == nil {
		s3.Release(e.ctx)
	}

	e.write(t, vm, sh, 0, 2*mib-4096, fill(4096, 3))
	m.wrote(0, 2*mib-4096, 4096)
	s4 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	ct, ok := e.open(t, s4, vm.Disks[0].ID).(hypervisor.ChangeTracker)
	if !ok {
		t.Fatal("disk of a later snapshot implements no ChangeTracker")
	}
	e.checkChanges(t, "after failed backups", ct, m, 0, vm.Disks[0].Size, sh.disks[0])
}

func testChangesInvalidTokens(t *testing.T, e *env) {
	vm := e.newVM(t, 1*mib)
	_, cts := e.trackedSnapshot(t, vm)
	good := cts[0].ChangeToken()
	// The engine passes a stored token to a later snapshot; ask both.
	later, ok := e.open(t, e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{}), vm.Disks[0].ID).(hypervisor.ChangeTracker)
	if !ok {
		t.Fatal("disk of a later snapshot implements no ChangeTracker")
	}
	long := make([]byte, 300)
	for i := range long {
		long[i] = byte(e.rng.UintN(256))
	}
	for _, tc := range []struct{ name, token string }{
		{"empty", ""},
		{"garbage", "hvtest-garbage"},
		{"binary", string(long)},
		{"valid token with a suffix", good + "-hvtest"},
		{"valid token with a prefix", "hvtest-" + good},
	} {
		for _, d := range []struct {
			name string
			ct   hypervisor.ChangeTracker
		}{{"own snapshot", cts[0]}, {"later snapshot", later}} {
			_, err := d.ct.ChangedExtents(e.ctx, tc.token)
			errIs(t, fmt.Sprintf("%s: ChangedExtents(%s token)", d.name, tc.name), err, hypervisor.ErrTokenInvalid)
		}
	}
	if _, err := later.ChangedExtents(e.ctx, good); err != nil {
		t.Errorf("ChangedExtents(valid token) after invalid ones: %v", err)
	}
}

func testChangesReset(t *testing.T, e *env) {
	r, ok := e.h.(TrackingResetter)
	if !ok {
		t.Skip("harness implements no TrackingResetter")
	}
	vm := e.newVM(t, 1*mib)
	sh := newShadow(vm)
	s0, cts := e.trackedSnapshot(t, vm)
	old := newMark("before the reset", cts, sh)
	s0.Release(e.ctx)
	if err := r.ResetChangeTracking(e.ctx, vm.ID); err != nil {
		t.Fatalf("Harness.ResetChangeTracking: %v", err)
	}
	e.write(t, vm, sh, 0, 0, fill(100, 9))
	s1 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	ct, ok := e.open(t, s1, vm.Disks[0].ID).(hypervisor.ChangeTracker)
	if !ok {
		t.Fatal("disk of a later snapshot implements no ChangeTracker")
	}
	_, err := ct.ChangedExtents(e.ctx, old.tokens[0])
	if !errors.Is(err, hypervisor.ErrTokenInvalid) {
		t.Errorf("ChangedExtents(token from before the reset) = %v, want an error wrapping ErrTokenInvalid", err)
	}
	// Tracking starts again: the next incremental works from the new
	// token (or, if the backend needs one more snapshot, from the one after).
	_, cts = e.trackedSnapshot(t, vm)
	m := newMark("after the reset", cts, sh)
	e.write(t, vm, sh, 0, 512*kib, fill(100, 10))
	m.wrote(0, 512*kib, 100)
	s2 := e.snapshot(t, vm.ID, hypervisor.SnapshotOptions{})
	ct, ok = e.open(t, s2, vm.Disks[0].ID).(hypervisor.ChangeTracker)
	if !ok {
		t.Fatal("disk of a later snapshot implements no ChangeTracker")
	}
	e.checkChanges(t, "after the reset", ct, m, 0, vm.Disks[0].Size, sh.disks[0])
}
