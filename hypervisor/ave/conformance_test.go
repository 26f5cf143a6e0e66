package ave_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/ave"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
	"github.com/vmbackup/vmbackup/hypervisor/hypervisortest"
)

// harness runs the conformance suite against ave talking to an avetest
// server.
type harness struct {
	srv   *avetest.Server
	hv    *ave.Hypervisor
	tools bool
}

var (
	_ hypervisortest.SnapshotCounter = (*harness)(nil)
	_ hypervisortest.QuiesceReporter = (*harness)(nil)
	_ hypervisortest.SpecAdjuster    = (*harness)(nil)
)

// quietLogger discards logs, so that expected warnings do not clutter test
// output.
func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// newBackend starts a server and a backend talking to it with short
// intervals; both are closed at the end of t.
func newBackend(t testing.TB, sopts avetest.Options, mod func(*ave.Options)) (*avetest.Server, *ave.Hypervisor) {
	t.Helper()
	if sopts.TaskDuration == 0 {
		sopts.TaskDuration = 4 * time.Millisecond
	}
	if sopts.ChunkSize == 0 {
		sopts.ChunkSize = 192 << 10
	}
	srv := avetest.NewServer(sopts)
	t.Cleanup(srv.Close)
	opts := ave.Options{
		BaseURL:          srv.URL(),
		Username:         avetest.DefaultUsername,
		Password:         avetest.DefaultPassword,
		TaskPollInterval: time.Millisecond,
		TaskTimeout:      5 * time.Second,
		RequestTimeout:   5 * time.Second,
		TempDir:          t.TempDir(),
		PageSize:         3, // small, so that paging is exercised
		Logger:           quietLogger(),
	}
	if mod != nil {
		mod(&opts)
	}
	hv, err := ave.New(opts)
	if err != nil {
		t.Fatalf("ave.New: %v", err)
	}
	return srv, hv
}

func makeHarness(tools bool) hypervisortest.MakeHarness {
	return func(ctx context.Context, t *testing.T) (hypervisortest.Harness, error) {
		srv, hv := newBackend(t, avetest.Options{}, nil)
		srv.AddVLAN("vlan-a", 10, "prod")
		srv.AddVLAN("vlan-b", 20, "backup")
		return &harness{srv: srv, hv: hv, tools: tools}, nil
	}
}

func (x *harness) Hypervisor() hypervisor.Hypervisor { return x.hv }

func (x *harness) NewVM(ctx context.Context, name string, sizes []int64) (hypervisor.VM, error) {
	spec := avetest.VMSpec{Name: name, ToolsRunning: x.tools, Labels: map[string]string{"suite": "hypervisortest"},
		NICs: []avetest.NICSpec{{VLAN: "vlan-a"}}}
	for _, s := range sizes {
		spec.Disks = append(spec.Disks, avetest.DiskSpec{Size: s})
	}
	info, err := x.srv.AddVM(spec)
	if err != nil {
		return hypervisor.VM{}, err
	}
	return x.hv.VM(ctx, info.ID)
}

func (x *harness) GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	return x.srv.GuestWrite(vmID, diskID, off, p)
}

func (x *harness) ChangeGranularity() int64 { return 0 }

func (x *harness) OpenSnapshots(ctx context.Context) (int, error) { return x.srv.Snapshots(), nil }

func (x *harness) CanQuiesce() bool { return x.tools }

func (x *harness) AdjustCreateSpec(spec *hypervisor.CreateSpec) {
	spec.Placement.Cluster = "cluster-1"
	for i := range spec.NICs {
		spec.NICs[i].Network = []string{"vlan-a", "vlan-b"}[i%2]
	}
}

// Close fails if anything was left behind: snapshots, export files,
// uploads not imported.
func (x *harness) Close() error {
	c := x.srv.Counts()
	if c.Snapshots != 0 || c.ExportFiles != 0 || c.Uploads != 0 {
		return fmt.Errorf("left behind on the server: %+v", c)
	}
	return nil
}

func TestConformance(t *testing.T) {
	t.Run("tools", func(t *testing.T) { hypervisortest.Run(t, makeHarness(true)) })
	t.Run("no-tools", func(t *testing.T) { hypervisortest.Run(t, makeHarness(false)) })
}
