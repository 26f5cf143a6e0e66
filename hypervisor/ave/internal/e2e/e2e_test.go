package e2e_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	_ "gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor/ave"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

const kib = 1 << 10

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i/4096) ^ seed ^ byte(i)
	}
	return p
}

// newBackend starts a server and a backend with short intervals.
func newBackend(t *testing.T, sopts avetest.Options) (*avetest.Server, *ave.Hypervisor) {
	t.Helper()
	sopts.TaskDuration = 4 * time.Millisecond
	srv := avetest.NewServer(sopts)
	t.Cleanup(srv.Close)
	hv, err := ave.New(ave.Options{
		BaseURL: srv.URL(), Username: avetest.DefaultUsername, Password: avetest.DefaultPassword,
		TaskPollInterval: time.Millisecond, TaskTimeout: 5 * time.Second, TempDir: t.TempDir(), Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, hv
}

func nothingLeft(t *testing.T, srv *avetest.Server) {
	t.Helper()
	if c := srv.Counts(); c.Snapshots != 0 || c.ExportFiles != 0 || c.Uploads != 0 {
		t.Errorf("left behind on the server: %+v", c)
	}
}

// TestEndToEnd runs backup.Service over ave and avetest: a full backup, a
// hash-based incremental (everything read, only new chunks stored), a
// restore in place and a rebuild of a VM with two disks and two NICs, every
// byte compared; then a backup whose download breaks half-way fails cleanly
// and leaves no snapshot.
func TestEndToEnd(t *testing.T) {
	const chunk = 64 * kib
	ctx := context.Background()
	srv, hv := newBackend(t, avetest.Options{})
	srv.AddVLAN("vlan-prod", 100, "prod")
	srv.AddVLAN("vlan-dr", 200, "dr")
	info, err := srv.AddVM(avetest.VMSpec{Name: "app-1", VCPU: 2, Memory: 1 << 30, ToolsRunning: true,
		Disks: []avetest.DiskSpec{{Size: 1024 * kib, Boot: 1}, {Size: 512 * kib}},
		NICs:  []avetest.NICSpec{{VLAN: "vlan-prod"}, {VLAN: "vlan-prod"}}})
	if err != nil {
		t.Fatal(err)
	}
	disks := [][]byte{pattern(1024*kib, 1), pattern(512*kib, 2)}
	clear(disks[0][300*kib : 700*kib]) // a hole: zero chunks are not stored
	for i, d := range disks {
		if err := srv.GuestWrite(info.ID, info.DiskIDs[i], 0, d); err != nil {
			t.Fatal(err)
		}
	}
	repo, err := repository.Init(ctx, "mem://", &repository.InitOptions{ChunkSize: chunk})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	svc, err := backup.New(backup.Config{Hypervisor: hv, Repository: repo, Logger: quietLogger(), Workers: 4})
	if err != nil {
		t.Fatal(err)
	}

	// Full backup, application-consistent (the guest tools run).
	job, err := svc.Backup(ctx, backup.Request{VMIDs: []string{info.ID}, Consistency: "application"})
	if err != nil {
		t.Fatalf("full backup: %v", err)
	}
	full := job.VMs[0]
	if full.Kind != backup.PointFull || full.Consistency != "application" || full.BytesRead != 1536*kib {
		t.Errorf("full backup: kind %q, consistency %q, read %d; want full, application, %d", full.Kind, full.Consistency, full.BytesRead, 1536*kib)
	}
	point1 := full.PointID
	want1 := [][]byte{bytes.Clone(disks[0]), bytes.Clone(disks[1])}

	// The guest changes three chunks; the next backup reads everything but
	// stores only those.
	for _, w := range []struct {
		disk int
		off  int
	}{{0, 0}, {0, 900 * kib}, {1, 200 * kib}} {
		p := pattern(1000, 0xee)
		copy(disks[w.disk][w.off:], p)
		if err := srv.GuestWrite(info.ID, info.DiskIDs[w.disk], int64(w.off), p); err != nil {
			t.Fatal(err)
		}
	}
	job, err = svc.Backup(ctx, backup.Request{VMIDs: []string{info.ID}})
	if err != nil {
		t.Fatalf("second backup: %v", err)
	}
	inc := job.VMs[0]
	if inc.BytesRead != 1536*kib || inc.BytesNew != 3*chunk {
		t.Errorf("hash-based incremental: read %d, new %d; want %d read (no change tracking) and %d new (3 chunks)",
			inc.BytesRead, inc.BytesNew, 1536*kib, 3*chunk)
	}
	if !strings.Contains(inc.Reason, "no change tracking") {
		t.Errorf("second backup reason %q, want it to say there is no change tracking", inc.Reason)
	}

	// Restore the first point in place (the VM runs: it is powered off).
	if _, err := svc.RestoreInPlace(ctx, point1, restore.InPlaceOptions{PowerOff: true}); err != nil {
		t.Fatalf("restore in place: %v", err)
	}
	for i := range want1 {
		got, _ := srv.ReadDisk(info.ID, info.DiskIDs[i])
		if !bytes.Equal(got, want1[i]) {
			t.Errorf("disk %d after restore in place differs from the first point", i)
		}
	}

	// Rebuild the second point as a new VM on the DR network.
	job, err = svc.Rebuild(ctx, inc.PointID, restore.RebuildOptions{Name: "app-1-dr",
		NetworkMap: map[string]string{"vlan-prod": "vlan-dr"}})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	vm := job.VMs[0].Restore.VM
	if len(vm.Disks) != 2 || len(vm.NICs) != 2 {
		t.Fatalf("rebuilt VM has %d disks and %d NICs, want 2 and 2", len(vm.Disks), len(vm.NICs))
	}
	for i, n := range vm.NICs {
		if n.Network != "vlan-dr" {
			t.Errorf("rebuilt NIC %d on %q, want vlan-dr", i, n.Network)
		}
	}
	for i := range disks {
		got, _ := srv.ReadDisk(vm.ID, vm.Disks[i].ID)
		if !bytes.Equal(got, disks[i]) {
			t.Errorf("rebuilt disk %d differs from the second point", i)
		}
	}
	nothingLeft(t, srv)

	// A download that breaks half-way, every time, without Range: the job
	// fails, says why, and the snapshot is gone.
	srv2, hv2 := newBackend(t, avetest.Options{NoRange: true})
	info2, err := srv2.AddVM(avetest.VMSpec{Name: "app-2", Disks: []avetest.DiskSpec{{Size: 512 * kib}}})
	if err != nil {
		t.Fatal(err)
	}
	srv2.GuestWrite(info2.ID, info2.DiskIDs[0], 0, pattern(512*kib, 3))
	srv2.Inject(avetest.Fault{Op: "download", DropAfter: 256 * kib, Times: -1})
	svc2, err := backup.New(backup.Config{Hypervisor: hv2, Repository: repo, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	job, err = svc2.Backup(ctx, backup.Request{VMIDs: []string{info2.ID}})
	if err == nil || job.State != backup.JobFailed {
		t.Fatalf("backup with broken downloads: state %q, err %v; want failed", job.State, err)
	}
	if !strings.Contains(err.Error(), "download") {
		t.Errorf("error %q does not say the download failed", err)
	}
	nothingLeft(t, srv2)
}
