package fake_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/hypervisor/hypervisortest"
)

// harness runs the conformance suite against a fake, with in-memory or
// file-backed disks.
type harness struct {
	h     *fake.Hypervisor
	opts  fake.Options
	files string // directory for image files; "" for in-memory disks
}

var (
	_ hypervisortest.SnapshotCounter  = (*harness)(nil)
	_ hypervisortest.TrackingResetter = (*harness)(nil)
	_ hypervisortest.QuiesceReporter  = (*harness)(nil)
)

func makeHarness(opts fake.Options, files bool) hypervisortest.MakeHarness {
	return func(ctx context.Context, t *testing.T) (hypervisortest.Harness, error) {
		x := &harness{h: fake.New(&opts), opts: opts}
		if files {
			x.files = t.TempDir()
		}
		return x, nil
	}
}

func (x *harness) Hypervisor() hypervisor.Hypervisor { return x.h }

func (x *harness) NewVM(ctx context.Context, name string, sizes []int64) (hypervisor.VM, error) {
	if x.files == "" {
		desc := hypervisor.VM{Name: name, CPUs: 1, MemoryB: 1 << 30, Labels: map[string]string{"suite": "hypervisortest"}}
		for _, s := range sizes {
			desc.Disks = append(desc.Disks, hypervisor.DiskInfo{Size: s})
		}
		return x.h.AddVM(desc)
	}
	var paths []string
	for i, s := range sizes {
		p := filepath.Join(x.files, fmt.Sprintf("%s-%d.raw", name, i))
		if err := makeSparse(p, s); err != nil {
			return hypervisor.VM{}, err
		}
		paths = append(paths, p)
	}
	return x.h.AddFileVM(name, paths...)
}

func makeSparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (x *harness) GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	return x.h.WriteDisk(ctx, vmID, diskID, off, p)
}

func (x *harness) ChangeGranularity() int64 { return x.h.Granularity() }

func (x *harness) OpenSnapshots(ctx context.Context) (int, error) { return x.h.OpenSnapshots(), nil }

func (x *harness) ResetChangeTracking(ctx context.Context, vmID string) error {
	x.h.ResetChangeTracking(vmID)
	return nil
}

func (x *harness) CanQuiesce() bool { return x.opts.Quiesce }

// Close fails if the suite leaked a snapshot: it releases every one it
// takes before the harness closes.
func (x *harness) Close() error {
	if n := x.h.OpenSnapshots(); n != 0 {
		x.h.Close()
		return fmt.Errorf("%d snapshots left open", n)
	}
	return x.h.Close()
}

func TestConformance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  fake.Options
		files bool
	}{
		{"memory", fake.Options{}, false},
		{"memory-quiesce-4k", fake.Options{Quiesce: true, Granularity: 4096}, false},
		{"memory-no-cbt-no-extents", fake.Options{NoChangeTracking: true, NoExtents: true}, false},
		{"file-no-cbt", fake.Options{NoChangeTracking: true}, true},
		{"file", fake.Options{}, true},
		{"file-quiesce-1m", fake.Options{Quiesce: true, Granularity: 1 << 20}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hypervisortest.Run(t, makeHarness(tc.opts, tc.files))
		})
	}
}
