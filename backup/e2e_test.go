package backup_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/go-multierror"
	_ "gocloud.dev/blob/fileblob"
	_ "gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

const testChunk = 64 << 10

// env is one fake hypervisor, one repository and one Service.
type env struct {
	hv   *fake.Hypervisor
	repo *repository.Repository
	svc  *backup.Service
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newEnv makes an env with a repository of kind "mem" or "file".
func newEnv(t *testing.T, kind string, fopts *fake.Options, cfg backup.Config) *env {
	t.Helper()
	ctx := context.Background()
	u := "mem://"
	if kind == "file" {
		u = (&url.URL{Scheme: "file", Path: filepath.ToSlash(t.TempDir())}).String()
	}
	repo, err := repository.Init(ctx, u, &repository.InitOptions{ChunkSize: testChunk})
	if err != nil {
		t.Fatalf("init repository %s: %v", u, err)
	}
	t.Cleanup(func() { repo.Close() })
	hv := fake.New(fopts)
	t.Cleanup(func() { hv.Close() })
	cfg.Hypervisor, cfg.Repository = hv, repo
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = time.Millisecond
	}
	svc, err := backup.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{hv: hv, repo: repo, svc: svc}
}

type diskWriterAt struct {
	hv         *fake.Hypervisor
	vmID, disk string
}

func (w diskWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if err := w.hv.WriteDisk(context.Background(), w.vmID, w.disk, off, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// addVM adds a VM with a realistic 8 MiB disk and a 3 MiB disk whose size
// is not a multiple of the chunk size.
func (e *env) addVM(t *testing.T, name string, seed int64) hypervisor.VM {
	t.Helper()
	vm, err := e.hv.AddVM(hypervisor.VM{
		Name: name, CPUs: 2, MemoryB: 1 << 30,
		Disks: []hypervisor.DiskInfo{{Name: "root", Size: 8 << 20, Bus: "virtio", BootOrder: 1}, {Name: "data", Size: 3<<20 + 12345, Bus: "scsi"}},
		NICs:  []hypervisor.NIC{{Model: "virtio", Network: "vlan-10", Connected: true}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range vm.Disks {
		if err := testimage.Generate(context.Background(), diskWriterAt{e.hv, vm.ID, d.ID}, d.Size, seed+int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	return vm
}

// mutate rewrites a fraction of every disk's 64 KiB blocks.
func (e *env) mutate(t *testing.T, vm hypervisor.VM, fraction float64, seed int64, clustered bool) {
	t.Helper()
	for i, d := range vm.Disks {
		if _, err := testimage.Mutate(context.Background(), diskWriterAt{e.hv, vm.ID, d.ID}, d.Size, fraction, seed*10+int64(i), clustered); err != nil {
			t.Fatal(err)
		}
	}
}

// contents reads every disk of a VM.
func (e *env) contents(t *testing.T, vm hypervisor.VM) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, d := range vm.Disks {
		p := make([]byte, d.Size)
		if err := e.hv.ReadDisk(context.Background(), vm.ID, d.ID, 0, p); err != nil {
			t.Fatal(err)
		}
		out[d.ID] = p
	}
	return out
}

// sameDisks fails t where got and want differ, naming the first differing chunk.
func sameDisks(t *testing.T, what string, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d disks, want %d", what, len(got), len(want))
	}
	for id, w := range want {
		g, ok := got[id]
		if !ok {
			t.Fatalf("%s: disk %s missing", what, id)
		}
		if len(g) != len(w) {
			t.Fatalf("%s: disk %s has %d bytes, want %d", what, id, len(g), len(w))
		}
		if !bytes.Equal(g, w) {
			for off := 0; off < len(w); off += testChunk {
				end := min(off+testChunk, len(w))
				if !bytes.Equal(g[off:end], w[off:end]) {
					t.Fatalf("%s: disk %s differs in the chunk at %d", what, id, off)
				}
			}
		}
	}
}

func (e *env) backup(t *testing.T, req backup.Request) *backup.Job {
	t.Helper()
	job, err := e.svc.Backup(context.Background(), req)
	if err != nil {
		t.Fatalf("backup %v: %v", req.VMIDs, err)
	}
	if job.State != backup.JobSucceeded {
		t.Fatalf("backup %v: state %s", req.VMIDs, job.State)
	}
	return job
}

func (e *env) points(t *testing.T, vmID string) []*repository.Manifest {
	t.Helper()
	ps, err := e.repo.ListPoints(context.Background(), repository.Filter{VMID: vmID})
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// rebuiltContents rebuilds a point and returns the new VM's disks keyed by
// the point's disk ids.
func (e *env) rebuilt(t *testing.T, point *repository.Manifest, name string) (*backup.Job, map[string][]byte) {
	t.Helper()
	job, err := e.svc.Rebuild(context.Background(), point.ID, restore.RebuildOptions{Name: name, DisconnectNICs: true})
	if err != nil {
		t.Fatalf("rebuild %s: %v", point.ID, err)
	}
	res := job.VMs[0].Restore
	vm, err := e.hv.VM(context.Background(), res.VM.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := e.contents(t, vm)
	out := map[string][]byte{}
	for i, d := range point.Disks {
		out[d.ID] = got[vm.Disks[i].ID]
	}
	return job, out
}

type step struct {
	name      string
	mutate    float64
	clustered bool
	reset     bool // reset change tracking before the backup
	forceFull bool
	wantKind  string
	wantWhy   string // substring of the reason
}

var chain = []step{
	{name: "first", wantKind: backup.PointFull, wantWhy: "first backup"},
	{name: "scattered writes", mutate: 0.02, wantKind: backup.PointIncremental, wantWhy: "changed blocks since"},
	{name: "forced full", mutate: 0.01, forceFull: true, wantKind: backup.PointFull, wantWhy: "forced full"},
	{name: "clustered writes", mutate: 0.05, clustered: true, wantKind: backup.PointIncremental, wantWhy: "changed blocks since"},
	{name: "tracking reset", mutate: 0.02, reset: true, wantKind: backup.PointFull, wantWhy: "token invalid"},
	{name: "after reset", mutate: 0.03, wantKind: backup.PointIncremental, wantWhy: "changed blocks since"},
	{name: "no writes", wantKind: backup.PointIncremental, wantWhy: "changed blocks since"},
}

// TestChain backs up a VM seven times with writes in between, then checks
// that every point restores byte-identical in place and rebuilt, that
// deleting points and collecting garbage leaves the others restorable, and
// that incrementals read only what changed.
func TestChain(t *testing.T) {
	for _, kind := range []string{"mem", "file"} {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, kind, nil, backup.Config{})
			vm := e.addVM(t, "web", 1)
			want := map[string]map[string][]byte{} // point id -> disk id -> content
			var ids []string
			for i, s := range chain {
				if s.reset {
					e.hv.ResetChangeTracking(vm.ID)
				}
				if s.mutate > 0 {
					e.mutate(t, vm, s.mutate, int64(i), s.clustered)
				}
				before := e.hv.Stats().BytesRead
				job := e.backup(t, backup.Request{VMIDs: []string{vm.ID}, ForceFull: s.forceFull, PlanID: "plan-1"})
				r := job.VMs[0]
				if r.Kind != s.wantKind || !strings.Contains(r.Reason, s.wantWhy) {
					t.Fatalf("backup %d (%s): kind %q reason %q, want %q containing %q", i, s.name, r.Kind, r.Reason, s.wantKind, s.wantWhy)
				}
				read := e.hv.Stats().BytesRead - before
				if read != r.BytesRead {
					t.Errorf("backup %d: result says %d bytes read, the hypervisor served %d", i, r.BytesRead, read)
				}
				if s.wantKind == backup.PointIncremental {
					// Every rewritten 64 KiB block dirties at most one chunk
					// (testChunk == 64 KiB), so an incremental reads at most
					// the rewritten blocks, rounded up per disk.
					limit := int64(s.mutate*float64(r.BytesTotal)) + int64(len(vm.Disks))*testChunk
					if read > limit {
						t.Errorf("incremental %d (%s) read %d bytes, want <= %d", i, s.name, read, limit)
					}
				} else if read >= r.BytesTotal*85/100 {
					t.Errorf("full %d read %d of %d bytes: holes were read", i, read, r.BytesTotal)
				}
				m, err := e.repo.Point(ctx, r.PointID)
				if err != nil {
					t.Fatal(err)
				}
				if m.Kind != s.wantKind || m.Reason != r.Reason || m.PlanID != "plan-1" || m.Consistency != "crash" {
					t.Errorf("manifest %s: kind %q reason %q plan %q consistency %q", m.ID, m.Kind, m.Reason, m.PlanID, m.Consistency)
				}
				for _, d := range m.Disks {
					if d.ChangeToken == "" {
						t.Errorf("manifest %s: disk %s has no change token", m.ID, d.ID)
					}
				}
				ids = append(ids, r.PointID)
				want[r.PointID] = e.contents(t, vm)
			}
			if n := e.hv.OpenSnapshots(); n != 0 {
				t.Fatalf("%d snapshots left open", n)
			}
			if ps := e.points(t, vm.ID); len(ps) != len(chain) || ps[0].ID != ids[len(ids)-1] {
				t.Fatalf("ListPoints: %d points, newest %s; want %d, newest %s", len(ps), ps[0].ID, len(chain), ids[len(ids)-1])
			}

			// Restore in place, in random order.
			if err := e.hv.PowerOff(ctx, vm.ID); err != nil {
				t.Fatal(err)
			}
			order := slices.Clone(ids)
			r := rand.New(rand.NewPCG(1, 2))
			r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			for _, id := range order {
				job, err := e.svc.RestoreInPlace(ctx, id, restore.InPlaceOptions{})
				if err != nil {
					t.Fatalf("restore %s in place: %v", id, err)
				}
				sameDisks(t, "restore in place of "+id, e.contents(t, vm), want[id])
				res := job.VMs[0].Restore
				for _, d := range res.Disks {
					if d.BytesWritten > d.Size/2 && d.Method == restore.MethodChanged {
						t.Errorf("restore %s disk %s wrote %d of %d bytes using changed blocks", id, d.ID, d.BytesWritten, d.Size)
					}
				}
			}
			// Rebuild every point.
			for i, id := range ids {
				m, _ := e.repo.Point(ctx, id)
				_, got := e.rebuilt(t, m, fmt.Sprintf("web-rebuilt-%d", i))
				sameDisks(t, "rebuild of "+id, got, want[id])
			}

			// Forget some points, collect garbage, the others still restore.
			for _, i := range []int{0, 1, 3} {
				if err := e.repo.DeletePoint(ctx, ids[i]); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := e.repo.GC(ctx, &repository.GCOptions{Grace: time.Nanosecond})
			if err != nil {
				t.Fatal(err)
			}
			if rep.ChunksRemoved == 0 {
				t.Errorf("GC after deleting 3 points removed no chunk: %+v", rep)
			}
			for _, i := range []int{2, 4, 5, 6} {
				m, err := e.repo.Point(ctx, ids[i])
				if err != nil {
					t.Fatal(err)
				}
				_, got := e.rebuilt(t, m, fmt.Sprintf("after-gc-%d", i))
				sameDisks(t, "rebuild after gc of "+ids[i], got, want[ids[i]])
				if _, err := e.svc.RestoreInPlace(ctx, ids[i], restore.InPlaceOptions{}); err != nil {
					t.Fatal(err)
				}
				sameDisks(t, "restore in place after gc of "+ids[i], e.contents(t, vm), want[ids[i]])
			}
			// And the next backup is still incremental, based on what is left.
			e.mutate(t, vm, 0.01, 99, false)
			job := e.backup(t, backup.Request{VMIDs: []string{vm.ID}})
			if job.VMs[0].Kind != backup.PointIncremental {
				t.Errorf("backup after gc: %s (%s), want incremental", job.VMs[0].Kind, job.VMs[0].Reason)
			}
			if rep, err := e.repo.Verify(ctx, &repository.VerifyOptions{Full: true}); err != nil || len(rep.Problems) > 0 {
				t.Fatalf("verify: %v %+v", err, rep)
			}
		})
	}
}

// TestWithoutChangeTracking: every backup reads everything, but stores only
// the chunks that changed, and restores compare instead of trusting tokens.
func TestWithoutChangeTracking(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", &fake.Options{NoChangeTracking: true, NoExtents: true}, backup.Config{})
	vm := e.addVM(t, "db", 5)
	first := e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0]
	want1 := e.contents(t, vm)
	e.mutate(t, vm, 0.03, 1, false)
	second := e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0]
	if second.Kind != backup.PointFull || second.Reason != "no change tracking" {
		t.Errorf("second backup: %s %q, want full \"no change tracking\"", second.Kind, second.Reason)
	}
	if second.BytesRead != second.BytesTotal || first.BytesRead != first.BytesTotal {
		t.Errorf("without extents every byte is read: read %d and %d of %d", first.BytesRead, second.BytesRead, second.BytesTotal)
	}
	if limit := int64(0.03*float64(second.BytesTotal)) + 2*testChunk; second.BytesNew > limit {
		t.Errorf("second backup stored %d new bytes, want <= %d (only changed chunks)", second.BytesNew, limit)
	}
	if err := e.hv.PowerOff(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	job, err := e.svc.RestoreInPlace(ctx, first.PointID, restore.InPlaceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameDisks(t, "restore of the first point", e.contents(t, vm), want1)
	for _, d := range job.VMs[0].Restore.Disks {
		if d.Method != restore.MethodCompare {
			t.Errorf("disk %s restored by %q, want %q", d.ID, d.Method, restore.MethodCompare)
		}
		if d.BytesWritten > int64(0.03*float64(d.Size))+testChunk {
			t.Errorf("disk %s: compare wrote %d of %d bytes", d.ID, d.BytesWritten, d.Size)
		}
	}
}

// TestCancelLeavesNothing cancels a backup in the middle of reading.
func TestCancelLeavesNothing(t *testing.T) {
	for _, kind := range []string{"mem", "file"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t, kind, nil, backup.Config{Workers: 2})
			vm := e.addVM(t, "web", 1)
			e.hv.Inject(fake.Fault{Op: fake.OpRead, After: 4, Times: -1, Delay: 5 * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var progress int
			unsub := e.svc.Subscribe(func(ev backup.Event) {
				if ev.Type == backup.EventProgress {
					progress++
					cancel()
				}
			})
			defer unsub()
			job, err := e.svc.Backup(ctx, backup.Request{VMIDs: []string{vm.ID}})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled backup: err %v, want context.Canceled", err)
			}
			if progress == 0 {
				t.Fatal("no progress event before the end")
			}
			if job.State != backup.JobCancelled || job.VMs[0].State != backup.VMCancelled {
				t.Errorf("job %s, vm %s; want cancelled", job.State, job.VMs[0].State)
			}
			if ps := e.points(t, vm.ID); len(ps) != 0 {
				t.Errorf("%d restore points after a cancelled backup", len(ps))
			}
			if n := e.hv.OpenSnapshots(); n != 0 {
				t.Errorf("%d snapshots left open", n)
			}
		})
	}
}

// TestFailuresAndRetries: a VM whose reads fail is retried and fails,
// leaving no point and no snapshot; the other VM of the job succeeds.
func TestFailuresAndRetries(t *testing.T) {
	e := newEnv(t, "mem", nil, backup.Config{Retries: 2})
	good := e.addVM(t, "good", 1)
	bad := e.addVM(t, "bad", 2)
	e.hv.Inject(fake.Fault{Op: fake.OpRead, VMID: bad.ID, After: 3, Times: -1})
	job, err := e.svc.Backup(context.Background(), backup.Request{VMIDs: []string{good.ID, bad.ID}})
	if err == nil {
		t.Fatal("no error from a job with a failing VM")
	}
	var merr *multierror.Error
	if !errors.As(err, &merr) || len(merr.Errors) != 1 || !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("error %v: want a multierror with one error wrapping fake.ErrInjected", err)
	}
	if !strings.Contains(err.Error(), bad.ID) {
		t.Errorf("error %q does not name vm %s", err, bad.ID)
	}
	got := []backup.VMState{job.VMs[0].State, job.VMs[1].State}
	if diff := cmp.Diff([]backup.VMState{backup.VMSucceeded, backup.VMFailed}, got); diff != "" {
		t.Errorf("vm states (-want +got):\n%s", diff)
	}
	if job.State != backup.JobPartiallyFailed || job.VMs[1].Retries != 2 {
		t.Errorf("job %s, retries %d; want partially failed after 2 retries", job.State, job.VMs[1].Retries)
	}
	if ps := e.points(t, bad.ID); len(ps) != 0 {
		t.Errorf("%d points of the failed vm", len(ps))
	}
	if n := e.hv.OpenSnapshots(); n != 0 {
		t.Errorf("%d snapshots left open", n)
	}

	// A transient fault: one failure, then the retry succeeds.
	e.hv.ClearFaults()
	e.hv.Inject(fake.Fault{Op: fake.OpSnapshot, VMID: bad.ID})
	job, err = e.svc.Backup(context.Background(), backup.Request{VMIDs: []string{bad.ID}})
	if err != nil || job.State != backup.JobSucceeded || job.VMs[0].Retries != 1 {
		t.Fatalf("transient fault: err %v, state %s, retries %d; want success after 1 retry", err, job.State, job.VMs[0].Retries)
	}
	// An unknown VM fails without retries.
	job, err = e.svc.Backup(context.Background(), backup.Request{VMIDs: []string{"nope"}})
	if !errors.Is(err, hypervisor.ErrNotFound) || job.State != backup.JobFailed || job.VMs[0].Retries != 0 {
		t.Fatalf("unknown vm: err %v, state %s, retries %d", err, job.State, job.VMs[0].Retries)
	}
}

// TestEventsAndRPO checks the order of events and the RPO on a fake clock.
func TestEventsAndRPO(t *testing.T) {
	now := time.Date(2026, 11, 25, 6, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnv(t, "mem", nil, backup.Config{Now: clock})
	vm := e.addVM(t, "web", 1)
	if _, _, err := e.svc.RPO(context.Background(), vm.ID); !errors.Is(err, backup.ErrNoRestorePoint) {
		t.Fatalf("RPO before any backup: %v, want ErrNoRestorePoint", err)
	}
	var types []backup.EventType
	var last backup.Event
	unsub := e.svc.Subscribe(func(ev backup.Event) {
		if n := len(types); n == 0 || types[n-1] != ev.Type {
			types = append(types, ev.Type)
		}
		if ev.Type == backup.EventProgress {
			last = ev
		}
	})
	job := e.backup(t, backup.Request{VMIDs: []string{vm.ID}, Manual: true})
	unsub()
	want := []backup.EventType{backup.EventJobStarted, backup.EventVMStarted, backup.EventProgress, backup.EventVMFinished, backup.EventJobFinished}
	if diff := cmp.Diff(want, types); diff != "" {
		t.Errorf("event types (-want +got):\n%s", diff)
	}
	if last.BytesDone != last.BytesTotal || last.BytesTotal == 0 {
		t.Errorf("last progress %d of %d", last.BytesDone, last.BytesTotal)
	}
	mu.Lock()
	now = now.Add(90 * time.Minute)
	mu.Unlock()
	rpo, at, err := e.svc.RPO(context.Background(), vm.ID)
	if err != nil || rpo != 90*time.Minute || !at.Equal(job.Started) {
		t.Errorf("RPO = %v at %v (%v), want 1h30m at %v", rpo, at, err, job.Started)
	}
}

// TestRestoreRefusals: a running VM, a size mismatch, and both allowed.
func TestRestoreRefusals(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", nil, backup.Config{})
	vm := e.addVM(t, "web", 1)
	want := e.contents(t, vm)
	p := e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0].PointID
	e.mutate(t, vm, 0.1, 3, false)

	_, err := e.svc.RestoreInPlace(ctx, p, restore.InPlaceOptions{})
	if !errors.Is(err, restore.ErrVMRunning) || !errors.Is(err, hypervisor.ErrConflict) {
		t.Fatalf("restore onto a running vm: %v, want ErrVMRunning and ErrConflict", err)
	}
	job, err := e.svc.RestoreInPlace(ctx, p, restore.InPlaceOptions{PowerOff: true, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	sameDisks(t, "restore with power off", e.contents(t, vm), want)
	if got := job.VMs[0].Restore.VM.Power; got != hypervisor.PowerRunning {
		t.Errorf("vm is %s after restore with Start, want running", got)
	}

	// Another VM whose disks are smaller.
	other, err := e.hv.AddVM(hypervisor.VM{Name: "small", Power: hypervisor.PowerStopped, Disks: []hypervisor.DiskInfo{{Size: 4 << 20}, {Size: 3 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.RestoreInPlace(ctx, p, restore.InPlaceOptions{VMID: other.ID}); !errors.Is(err, restore.ErrSizeMismatch) {
		t.Fatalf("restore onto smaller disks: %v, want ErrSizeMismatch", err)
	}
	if _, err := e.svc.RestoreInPlace(ctx, p, restore.InPlaceOptions{VMID: other.ID, AllowSizeMismatch: true}); err != nil {
		t.Fatal(err)
	}
	got := e.contents(t, other)
	for _, d := range other.Disks {
		if !bytes.Equal(got[d.ID], want[d.ID][:d.Size]) {
			t.Errorf("disk %s: first %d bytes differ from the point", d.ID, d.Size)
		}
	}
}

// TestRebuildSpec checks the overrides of a rebuild.
func TestRebuildSpec(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", nil, backup.Config{})
	vm := e.addVM(t, "web", 1)
	p := e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0].PointID
	job, err := e.svc.Rebuild(ctx, p, restore.RebuildOptions{
		Name: "web-copy", CPUs: 4, NetworkMap: map[string]string{"vlan-10": "vlan-20"}, DisconnectNICs: true, PowerOn: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := job.VMs[0].Restore.VM
	if got.Name != "web-copy" || got.CPUs != 4 || got.MemoryB != 1<<30 || got.Power != hypervisor.PowerRunning {
		t.Errorf("rebuilt vm %+v", got)
	}
	if len(got.NICs) != 1 || got.NICs[0].Network != "vlan-20" || got.NICs[0].Connected || got.NICs[0].MAC == vm.NICs[0].MAC {
		t.Errorf("rebuilt nics %+v (source mac %s)", got.NICs, vm.NICs[0].MAC)
	}
	for i, d := range job.VMs[0].Restore.Disks {
		if d.Method != restore.MethodFresh || d.ChunksSkipped == 0 {
			t.Errorf("disk %d: method %q, %d zero chunks skipped", i, d.Method, d.ChunksSkipped)
		}
	}
	if job.VMs[0].VMID != got.ID {
		t.Errorf("job names vm %s, want the new vm %s", job.VMs[0].VMID, got.ID)
	}
}

func TestNewValidates(t *testing.T) {
	tests := []struct {
		name  string
		cfg   backup.Config
		field []string
	}{
		{"empty", backup.Config{}, []string{"Hypervisor", "Repository"}},
		{"negative limits", backup.Config{Hypervisor: fake.New(nil), ParallelVMs: -1, Workers: -2, ReadBytesPerSec: -3, RetryDelay: -1, MaxInFlightBytes: -1}, []string{"Repository", "ParallelVMs", "Workers", "ReadBytesPerSec", "RetryDelay", "MaxInFlightBytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := backup.New(tt.cfg)
			if err == nil {
				t.Fatal("no error")
			}
			for _, f := range tt.field {
				if !strings.Contains(err.Error(), f) {
					t.Errorf("error %q does not name %s", err, f)
				}
			}
		})
	}
	e := newEnv(t, "mem", nil, backup.Config{})
	if _, err := e.svc.Backup(context.Background(), backup.Request{}); err == nil || !strings.Contains(err.Error(), "VMIDs") {
		t.Errorf("empty request: %v, want an error naming VMIDs", err)
	}
}

// TestConsistency: application consistency that the guest cannot give
// fails the VM (without retries), or falls back to crash consistency with
// the reason recorded when allowed.
func TestConsistency(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", nil, backup.Config{Retries: 3})
	vm := e.addVM(t, "web", 1)
	job, err := e.svc.Backup(ctx, backup.Request{VMIDs: []string{vm.ID}, Consistency: hypervisor.ApplicationConsistent})
	if !errors.Is(err, hypervisor.ErrUnsupported) || job.VMs[0].Retries != 0 || job.State != backup.JobFailed {
		t.Fatalf("application consistency without fallback: err %v, state %s, retries %d", err, job.State, job.VMs[0].Retries)
	}
	job = e.backup(t, backup.Request{VMIDs: []string{vm.ID}, Consistency: hypervisor.ApplicationConsistent, AllowCrashFallback: true})
	r := job.VMs[0]
	m, err := e.repo.Point(ctx, r.PointID)
	if err != nil {
		t.Fatal(err)
	}
	if r.Consistency != hypervisor.CrashConsistent || r.Note == "" || m.Consistency != "crash" || m.Note != r.Note {
		t.Errorf("fallback: result %s %q, manifest %s %q; want crash with a note", r.Consistency, r.Note, m.Consistency, m.Note)
	}

	q := newEnv(t, "mem", &fake.Options{Quiesce: true}, backup.Config{})
	qvm := q.addVM(t, "db", 2)
	r = q.backup(t, backup.Request{VMIDs: []string{qvm.ID}, Consistency: hypervisor.ApplicationConsistent}).VMs[0]
	if r.Consistency != hypervisor.ApplicationConsistent || r.Note != "" {
		t.Errorf("quiescing guest: %s %q, want application consistency", r.Consistency, r.Note)
	}
}

// TestCorruptChunk: a damaged chunk stops a restore with an error that
// wraps repository.ErrCorrupt and names the chunk, and the job fails.
func TestCorruptChunk(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "mem", nil, backup.Config{})
	vm := e.addVM(t, "web", 1)
	p := e.backup(t, backup.Request{VMIDs: []string{vm.ID}}).VMs[0].PointID
	m, err := e.repo.Point(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := e.repo.ReadIndex(ctx, m.Disks[0].Index)
	if err != nil {
		t.Fatal(err)
	}
	var victim repository.ChunkID
	for i := 0; i < idx.Len() && victim.IsZero(); i++ {
		victim = idx.Get(i)
	}
	if err := e.repo.Bucket().WriteAll(ctx, repository.ChunkKey(victim), []byte("garbage"), nil); err != nil {
		t.Fatal(err)
	}
	job, err := e.svc.Rebuild(ctx, p, restore.RebuildOptions{Name: "copy"})
	if !errors.Is(err, repository.ErrCorrupt) {
		t.Fatalf("rebuild from a damaged point: %v, want ErrCorrupt", err)
	}
	if job.State != backup.JobFailed || !strings.Contains(err.Error(), victim.String()) || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("job %s, error %q: want failed, naming chunk %s and saying the vm is incomplete", job.State, err, victim)
	}
}
