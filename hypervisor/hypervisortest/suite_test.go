package hypervisortest_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/hypervisor/hypervisortest"
)

// The suite is tested by running it against backends with one deliberate
// bug each (the fake behind a wrapper that breaks one promise) in a child
// process, and checking that the subtest meant to catch the bug fails. A
// suite that passes a broken backend is itself broken.

const bugEnv = "HYPERVISORTEST_SELFTEST_BUG"

// bugs maps each deliberate bug to the subtest that must catch it.
var bugs = map[string]string{
	"miss-last-change":  "Changes/Random",
	"no-isolation":      "Snapshot/Isolation",
	"extents-miss-last": "Extents",
	"accept-garbage":    "Changes/InvalidTokens",
	"no-eof":            "ReadAt/Semantics",
	"write-running":     "DiskWriter",
	"ignore-cancel":     "Cancel",
	"release-leaks":     "Snapshot/Release",
	"fallback-silently": "Snapshot/Consistency",
	"coarse-changes":    "Changes/Random",
}

func TestSuiteCatchesBugs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite in child processes")
	}
	for bug, sub := range bugs {
		t.Run(bug, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenBackend$/^"+sub+"$", "-test.count=1")
			cmd.Env = append(os.Environ(), bugEnv+"="+bug)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("the suite passed a backend with bug %q; %s should have failed:\n%s", bug, sub, out)
			}
			if !strings.Contains(string(out), "--- FAIL: TestBrokenBackend/"+sub) {
				t.Errorf("with bug %q, %s did not fail:\n%s", bug, sub, out)
			}
		})
	}
}

// TestSkipper checks that a Harness's Skipper skips exactly the named
// subtests, at any depth, and that a correct backend passes the rest.
func TestSkipper(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the suite in a child process")
	}
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestBrokenBackend$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), bugEnv+"=none-skip")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the suite failed the fake: %v\n%s", err, out)
	}
	for _, want := range []string{
		"--- SKIP: TestBrokenBackend/Create ",
		"--- SKIP: TestBrokenBackend/Power/Shutdown ",
		"--- PASS: TestBrokenBackend/Power ",
		"--- PASS: TestBrokenBackend/Changes/Random ",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

// TestBrokenBackend runs the suite against the backend with the bug named
// in the environment; it only runs as TestSuiteCatchesBugs's child.
func TestBrokenBackend(t *testing.T) {
	bug := os.Getenv(bugEnv)
	if bug == "" {
		t.Skip("run by TestSuiteCatchesBugs")
	}
	hypervisortest.Run(t, func(ctx context.Context, t *testing.T) (hypervisortest.Harness, error) {
		h := fake.New(&fake.Options{Granularity: 4096})
		x := &harness{h: h, hv: &brokenHV{Hypervisor: h, bug: bug}}
		if bug == "none-skip" {
			return &skipHarness{x}, nil
		}
		return x, nil
	})
}

type skipHarness struct{ *harness }

func (skipHarness) SkipTest(name string) string {
	switch name {
	case "Create", "Power/Shutdown":
		return "skipped by the self-test"
	}
	return ""
}

type harness struct {
	h  *fake.Hypervisor
	hv hypervisor.Hypervisor
}

func (x *harness) Hypervisor() hypervisor.Hypervisor { return x.hv }

func (x *harness) NewVM(ctx context.Context, name string, sizes []int64) (hypervisor.VM, error) {
	vm := hypervisor.VM{Name: name}
	for _, s := range sizes {
		vm.Disks = append(vm.Disks, hypervisor.DiskInfo{Size: s})
	}
	return x.h.AddVM(vm)
}

func (x *harness) GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	return x.h.WriteDisk(ctx, vmID, diskID, off, p)
}

func (x *harness) ChangeGranularity() int64 { return x.h.Granularity() }

func (x *harness) OpenSnapshots(ctx context.Context) (int, error) { return x.h.OpenSnapshots(), nil }

func (x *harness) Close() error { return x.h.Close() }

// brokenHV is the fake with one bug.
type brokenHV struct {
	*fake.Hypervisor
	bug string
}

func (b *brokenHV) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if b.bug == "ignore-cancel" {
		ctx = context.WithoutCancel(ctx)
	}
	return b.Hypervisor.ListVMs(ctx)
}

func (b *brokenHV) Snapshot(ctx context.Context, vmID string, opts hypervisor.SnapshotOptions) (hypervisor.Snapshot, error) {
	if b.bug == "fallback-silently" && opts.Consistency == hypervisor.ApplicationConsistent {
		opts.Consistency = hypervisor.CrashConsistent
	}
	s, err := b.Hypervisor.Snapshot(ctx, vmID, opts)
	if err != nil {
		return nil, err
	}
	return &brokenSnap{Snapshot: s, b: b}, nil
}

func (b *brokenHV) OpenDiskForWrite(ctx context.Context, vmID, diskID string) (hypervisor.WritableDisk, error) {
	w, err := b.Hypervisor.OpenDiskForWrite(ctx, vmID, diskID)
	if b.bug == "write-running" && errors.Is(err, hypervisor.ErrConflict) {
		b.PowerOff(ctx, vmID)
		w, err = b.Hypervisor.OpenDiskForWrite(ctx, vmID, diskID)
	}
	return w, err
}

type brokenSnap struct {
	hypervisor.Snapshot
	b *brokenHV
}

func (s *brokenSnap) Release(ctx context.Context) error {
	if s.b.bug == "release-leaks" && ctx.Err() != nil {
		return nil
	}
	return s.Snapshot.Release(ctx)
}

func (s *brokenSnap) OpenDisk(ctx context.Context, diskID string) (hypervisor.Disk, error) {
	d, err := s.Snapshot.OpenDisk(ctx, diskID)
	if err != nil {
		return nil, err
	}
	return &brokenDisk{
		Disk:           d,
		ExtentReporter: d.(hypervisor.ExtentReporter),
		ChangeTracker:  d.(hypervisor.ChangeTracker),
		s:              s,
		diskID:         diskID,
	}, nil
}

type brokenDisk struct {
	hypervisor.Disk
	hypervisor.ExtentReporter
	hypervisor.ChangeTracker
	s      *brokenSnap
	diskID string
}

func (d *brokenDisk) ReadAt(p []byte, off int64) (int, error) {
	switch d.s.b.bug {
	case "no-isolation":
		size := d.Size()
		if off >= size {
			return 0, io.EOF
		}
		n := min(int64(len(p)), size-off)
		if err := d.s.b.ReadDisk(context.Background(), d.s.Info().VM.ID, d.diskID, off, p[:n]); err != nil {
			return 0, err
		}
		if int(n) < len(p) {
			return int(n), io.EOF
		}
		return int(n), nil
	case "no-eof":
		n, err := d.Disk.ReadAt(p, off)
		if err == io.EOF {
			err = nil
		}
		return n, err
	}
	return d.Disk.ReadAt(p, off)
}

func (d *brokenDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	ext, err := d.ExtentReporter.AllocatedExtents(ctx)
	if d.s.b.bug == "extents-miss-last" && len(ext) > 0 {
		ext = ext[:len(ext)-1]
	}
	return ext, err
}

func (d *brokenDisk) ChangedExtents(ctx context.Context, token string) ([]hypervisor.Extent, error) {
	ext, err := d.ChangeTracker.ChangedExtents(ctx, token)
	switch d.s.b.bug {
	case "miss-last-change":
		if len(ext) > 0 {
			last := &ext[len(ext)-1]
			if last.Length > 512 {
				last.Length -= 512
			} else {
				ext = ext[:len(ext)-1]
			}
		}
	case "accept-garbage":
		if errors.Is(err, hypervisor.ErrTokenInvalid) {
			return nil, nil
		}
	case "coarse-changes":
		// Report whole MiBs: never misses, but over-reports far beyond
		// the stated granularity of 4 KiB.
		for i := range ext {
			end := min((ext[i].End()+(1<<20)-1)>>20<<20, d.Size())
			ext[i].Offset = ext[i].Offset >> 20 << 20
			ext[i].Length = end - ext[i].Offset
		}
		ext = mergeExtents(ext)
	}
	return ext, err
}

func mergeExtents(in []hypervisor.Extent) []hypervisor.Extent {
	var out []hypervisor.Extent
	for _, e := range in {
		if n := len(out); n > 0 && e.Offset <= out[n-1].End() {
			out[n-1].Length = max(out[n-1].End(), e.End()) - out[n-1].Offset
			continue
		}
		out = append(out, e)
	}
	return out
}

// Close, Size and ChangeToken are ambiguous between the embedded
// interfaces; they go to the Disk.
func (d *brokenDisk) Close() error        { return d.Disk.Close() }
func (d *brokenDisk) Size() int64         { return d.Disk.Size() }
func (d *brokenDisk) ChangeToken() string { return d.ChangeTracker.ChangeToken() }
