package ave_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/ave"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
)

const kib = 1 << 10

// pattern returns n bytes that differ from block to block.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i/4096) ^ seed ^ byte(i)
	}
	return p
}

// addVM seeds a running VM with one disk filled with a pattern.
func addVM(t *testing.T, srv *avetest.Server, name string, size int) (avetest.VMInfo, []byte) {
	t.Helper()
	info, err := srv.AddVM(avetest.VMSpec{Name: name, Disks: []avetest.DiskSpec{{Size: int64(size)}}})
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(size, 0x5a)
	if err := srv.GuestWrite(info.ID, info.DiskIDs[0], 0, data); err != nil {
		t.Fatal(err)
	}
	return info, data
}

// backupDisk snapshots the VM, reads its first disk whole and releases.
func backupDisk(ctx context.Context, hv *ave.Hypervisor, vmID, diskID string, size int) ([]byte, error) {
	s, err := hv.Snapshot(ctx, vmID, hypervisor.SnapshotOptions{})
	if err != nil {
		return nil, err
	}
	defer s.Release(context.WithoutCancel(ctx))
	d, err := s.OpenDisk(ctx, diskID)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	got := make([]byte, size)
	for off := 0; off < size; off += 128 * kib {
		if _, err := d.ReadAt(got[off:min(off+128*kib, size)], int64(off)); err != nil && err != io.EOF {
			return nil, err
		}
	}
	return got, nil
}

// nothingLeft fails t if the server holds snapshots, export files or
// uploads.
func nothingLeft(t *testing.T, srv *avetest.Server) {
	t.Helper()
	c := srv.Counts()
	if c.Snapshots != 0 || c.ExportFiles != 0 || c.Uploads != 0 {
		t.Errorf("left behind on the server: %+v", c)
	}
}

func TestBadInput(t *testing.T) {
	const size = 512 * kib
	for _, tc := range []struct {
		name   string
		sopts  avetest.Options
		mod    func(*ave.Options)
		fault  *avetest.Fault
		vmID   string // "" means the seeded VM
		want   error  // errors.Is target
		inMsg  string // the error message must contain this
		logins int    // login requests expected, if > 0
	}{
		{name: "wrong password", mod: func(o *ave.Options) { o.Password = "not-the-password" },
			want: ave.ErrLogin, inMsg: "wrong username or password"},
		{name: "unknown API token", mod: func(o *ave.Options) { o.Username, o.Password, o.Token = "", "", "bogus-token-123" },
			want: ave.ErrLogin, inMsg: "401"},
		{name: "unknown VM", vmID: "vm-does-not-exist", want: hypervisor.ErrNotFound, inMsg: "vm-does-not-exist"},
		{name: "malformed JSON", fault: &avetest.Fault{Op: "get-vms", Body: `[{"id": "vm-1", "name": `, ContentType: "application/json"},
			want: ave.ErrBadResponse, inMsg: "get-vms: malformed JSON"},
		{name: "HTML page with 200", fault: &avetest.Fault{Op: "get-vm-disks", Body: "<html><body>Portal login</body></html>", ContentType: "text/html"},
			want: ave.ErrBadResponse, inMsg: "get-vm-disks: answer is text/html, not JSON"},
		{name: "HTML error page", fault: &avetest.Fault{Op: "create-vm-snapshot", Status: 502, Body: "<html><h1>502 Bad Gateway</h1></html>", ContentType: "text/html"},
			inMsg: "create-vm-snapshot: AOC answered 502"},
		{name: "AOC error 500", fault: &avetest.Fault{Op: "export-vm-volume", Status: 500},
			inMsg: "export-vm-volume: AOC answered 500 INJECTED"},
		{name: "snapshot task fails", fault: &avetest.Fault{Op: "create-vm-snapshot", FailTask: "SNAPSHOT_CREATE_FAILED"},
			inMsg: "SNAPSHOT_CREATE_FAILED"},
		{name: "snapshot task never ends", fault: &avetest.Fault{Op: "create-vm-snapshot", HangTask: true},
			mod: func(o *ave.Options) { o.TaskTimeout = 50 * time.Millisecond }, want: ave.ErrTaskTimeout, inMsg: "did not finish within 50ms"},
		{name: "export task never ends", fault: &avetest.Fault{Op: "export-vm-volume", HangTask: true},
			mod: func(o *ave.Options) { o.TaskTimeout = 50 * time.Millisecond }, want: ave.ErrTaskTimeout, inMsg: "export-vm-volume"},
		{name: "download link gone", fault: &avetest.Fault{Op: "download", Status: 404},
			inMsg: "HTTP 404"},
		{name: "download always dropped without Range", sopts: avetest.Options{NoRange: true}, fault: &avetest.Fault{Op: "download", DropAfter: 100 * kib, Times: -1},
			mod: func(o *ave.Options) { o.DownloadRetries = 2 }, inMsg: "giving up at byte 102400"},
		{name: "download always 503", fault: &avetest.Fault{Op: "download", Status: 503, Times: -1},
			mod: func(o *ave.Options) { o.DownloadRetries = 2 }, inMsg: "HTTP 503"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, hv := newBackend(t, tc.sopts, tc.mod)
			info, _ := addVM(t, srv, "vm-bad-input", size)
			if tc.fault != nil {
				srv.Inject(*tc.fault)
			}
			vmID := info.ID
			if tc.vmID != "" {
				vmID = tc.vmID
			}
			_, err := backupDisk(t.Context(), hv, vmID, info.DiskIDs[0], size)
			if err == nil {
				t.Fatal("backup succeeded, want an error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q does not wrap %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.inMsg) {
				t.Errorf("error %q does not say %q", err, tc.inMsg)
			}
			if strings.Contains(err.Error(), avetest.DefaultPassword) || strings.Contains(err.Error(), "not-the-password") {
				t.Errorf("error %q shows the password", err)
			}
			nothingLeft(t, srv)
		})
	}
}

// TestDownloadResumed drops the connection mid-download: the backend
// resumes with Range (or starts over where the server ignores Range) and
// reads the right bytes.
func TestDownloadResumed(t *testing.T) {
	const size = 640 * kib
	for _, tc := range []struct {
		name      string
		noRange   bool
		wantBytes int // bytes the server sent in all, about
	}{
		{"range", false, size + 0},
		{"no-range", true, size + 200*kib},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, hv := newBackend(t, avetest.Options{NoRange: tc.noRange}, nil)
			info, want := addVM(t, srv, "vm-drop", size)
			srv.Inject(avetest.Fault{Op: "download", DropAfter: 200 * kib, Times: 2})
			got, err := backupDisk(t.Context(), hv, info.ID, info.DiskIDs[0], size)
			if err != nil {
				t.Fatalf("backup with dropped downloads: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("bytes read after resumed download differ from the disk")
			}
			if n := srv.Requests("download"); n != 3 {
				t.Errorf("%d download requests, want 3 (two dropped, one complete)", n)
			}
			nothingLeft(t, srv)
		})
	}
}

// TestExpiredToken: a token AOC no longer accepts is renewed once, and the
// call succeeds.
func TestExpiredToken(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, nil)
	info, want := addVM(t, srv, "vm-token", 256*kib)
	ctx := t.Context()
	if _, err := hv.ListVMs(ctx); err != nil {
		t.Fatal(err)
	}
	srv.ExpireTokens()
	got, err := backupDisk(ctx, hv, info.ID, info.DiskIDs[0], 256*kib)
	if err != nil {
		t.Fatalf("backup after the token expired: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Error("bytes differ")
	}
	if n := srv.Requests("login"); n != 2 {
		t.Errorf("%d logins, want 2 (first call, once after expiry)", n)
	}
	// A login that then fails is reported, not looped on.
	srv.ExpireTokens()
	srv.Inject(avetest.Fault{Op: "login", Status: 503, Times: -1})
	_, err = hv.ListVMs(ctx)
	if !errors.Is(err, ave.ErrLogin) {
		t.Errorf("ListVMs with login failing: %v, want ErrLogin", err)
	}
	if n := srv.Requests("login"); n != 3 {
		t.Errorf("%d logins, want 3", n)
	}
}

// TestSecretsNotShown: passwords and tokens appear in no log line, error or
// printed Options.
func TestSecretsNotShown(t *testing.T) {
	const apiKey = "api-key-5ecr3t-value"
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var errs []string
	for _, mod := range []func(*ave.Options){
		func(o *ave.Options) { o.Logger = logger },
		func(o *ave.Options) { o.Logger = logger; o.Password = "wrong-pa55word" },
		func(o *ave.Options) { o.Logger = logger; o.Username, o.Password, o.Token = "", "", apiKey },
	} {
		srv, hv := newBackend(t, avetest.Options{APIKeys: []string{apiKey}}, mod)
		info, _ := addVM(t, srv, "vm-secret", 256*kib)
		srv.Inject(avetest.Fault{Op: "download", DropAfter: 64 * kib})
		if _, err := backupDisk(t.Context(), hv, info.ID, info.DiskIDs[0], 256*kib); err != nil {
			errs = append(errs, err.Error())
		}
		srv.ExpireTokens()
		srv.Inject(avetest.Fault{Op: "get-vms", Status: 500})
		if _, err := hv.ListVMs(t.Context()); err != nil {
			errs = append(errs, err.Error())
		}
	}
	opts := ave.Options{BaseURL: "https://aoc", Username: "u", Password: avetest.DefaultPassword, Token: apiKey}
	printed := fmt.Sprintf("%v %+v %s", opts, opts, opts)
	all := logs.String() + strings.Join(errs, "\n") + printed
	if len(errs) < 3 {
		t.Errorf("want at least 3 errors to inspect, got %q", errs)
	}
	for _, secret := range []string{avetest.DefaultPassword, "wrong-pa55word", apiKey, "secret="} {
		if strings.Contains(all, secret) {
			t.Errorf("%q appears in logs, errors or printed options:\n%s", secret, all)
		}
	}
	if !strings.Contains(logs.String(), "download interrupted") {
		t.Errorf("logs do not show the resumed download; the test did not exercise it:\n%s", logs.String())
	}
}

func TestAPIErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		status int
		code   string
		want   error
	}{
		{404, "", hypervisor.ErrNotFound},
		{400, "VM_NOT_FOUND", hypervisor.ErrNotFound},
		{400, "VmNotFound", hypervisor.ErrNotFound},
		{409, "", hypervisor.ErrConflict},
		{400, "VM_STATUS_NOT_ALLOWED", hypervisor.ErrConflict},
		{400, "VM_NAME_DUPLICATE", hypervisor.ErrConflict},
		{501, "", hypervisor.ErrUnsupported},
		{400, "VM_TOOLS_NOT_RUNNING", hypervisor.ErrUnsupported},
		{401, "UNAUTHORIZED", ave.ErrLogin},
		{400, "BAD_REQUEST", nil},
		{500, "INTERNAL", nil},
	} {
		e := &ave.APIError{Op: "op", Status: tc.status, Code: tc.code, Message: "m"}
		for _, s := range []error{hypervisor.ErrNotFound, hypervisor.ErrConflict, hypervisor.ErrUnsupported, ave.ErrLogin} {
			if got := errors.Is(e, s); got != (s == tc.want) {
				t.Errorf("APIError{%d %q}: errors.Is(%v) = %v", tc.status, tc.code, s, got)
			}
		}
	}
}

// TestListVMsPaging: more VMs than a page, with labels, CD-ROMs left out.
func TestListVMsPaging(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, nil)
	want := map[string]map[string]string{}
	for i := range 8 {
		labels := map[string]string{"tier": []string{"gold", "silver"}[i%2], "n": fmt.Sprint(i)}
		info, err := srv.AddVM(avetest.VMSpec{Name: fmt.Sprintf("vm-%d", i), Labels: labels,
			Disks: []avetest.DiskSpec{{Size: 64 * kib}, {CDROM: true}}})
		if err != nil {
			t.Fatal(err)
		}
		want[info.ID] = labels
	}
	vms, err := hv.ListVMs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]string{}
	for _, vm := range vms {
		got[vm.ID] = vm.Labels
		if len(vm.Disks) != 1 || vm.Disks[0].Size != 64*kib {
			t.Errorf("VM %s disks %+v, want one of 64 KiB (CD-ROM left out)", vm.ID, vm.Disks)
		}
		if len(vm.Raw) == 0 || !bytes.Contains(vm.Raw, []byte(`"vm_tools_status"`)) {
			t.Errorf("VM %s Raw is not AOC's VM JSON: %s", vm.ID, vm.Raw)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListVMs labels (-want +got):\n%s", diff)
	}
	if n := srv.Requests("get-vms"); n != 3 {
		t.Errorf("%d get-vms requests for 8 VMs in pages of 3, want 3", n)
	}
}

// TestConsistencyFallbackOnServerRefusal: the VM looked quiescable, but
// AOC refuses file-system consistency; with fallback the snapshot is
// crash-consistent and says why, without it the error wraps ErrUnsupported.
func TestConsistencyFallbackOnServerRefusal(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, nil)
	info, err := srv.AddVM(avetest.VMSpec{Name: "vm-fs", ToolsRunning: true, Disks: []avetest.DiskSpec{{Size: 64 * kib}}})
	if err != nil {
		t.Fatal(err)
	}
	refuse := avetest.Fault{Op: "create-vm-snapshot", Status: 400, ContentType: "application/json",
		Body: `{"status":400,"code":"VM_TOOLS_NOT_RUNNING","message":"guest tools stopped responding","path":"/v2/api/create-vm-snapshot","props":{}}`}
	srv.Inject(refuse)
	_, err = hv.Snapshot(t.Context(), info.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent})
	if !errors.Is(err, hypervisor.ErrUnsupported) {
		t.Errorf("refused FS-consistent snapshot without fallback: %v, want ErrUnsupported", err)
	}
	srv.Inject(refuse)
	s, err := hv.Snapshot(t.Context(), info.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent, AllowCrashFallback: true})
	if err != nil {
		t.Fatal(err)
	}
	in := s.Info()
	s.Release(t.Context())
	if in.Consistency != hypervisor.CrashConsistent || !strings.Contains(in.Note, "guest tools stopped responding") {
		t.Errorf("fallback snapshot: %q, note %q", in.Consistency, in.Note)
	}
	nothingLeft(t, srv)
}

// TestRestoreInPlace: the old volume is kept by default and deleted with
// DeleteReplacedVolumes; a swap refused because the VM was started behind
// the backend's back leaves the disk and the volumes as they were.
func TestRestoreInPlace(t *testing.T) {
	const size = 384 * kib
	for _, del := range []bool{false, true} {
		t.Run(fmt.Sprintf("delete=%v", del), func(t *testing.T) {
			srv, hv := newBackend(t, avetest.Options{}, func(o *ave.Options) { o.DeleteReplacedVolumes = del })
			info, old := addVM(t, srv, "vm-restore", size)
			ctx := t.Context()
			if err := hv.PowerOff(ctx, info.ID); err != nil {
				t.Fatal(err)
			}
			before := srv.Counts().Volumes
			w, err := hv.OpenDiskForWrite(ctx, info.ID, info.DiskIDs[0])
			if err != nil {
				t.Fatal(err)
			}
			if err := hv.Start(ctx, info.ID); !errors.Is(err, hypervisor.ErrConflict) {
				t.Errorf("Start while a disk is open for writing: %v, want ErrConflict", err)
			}
			want := append([]byte(nil), old...)
			p := pattern(100*kib, 0xc3)
			copy(want[70*kib:], p)
			if _, err := w.WriteAt(p, 70*kib); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			got, err := srv.ReadDisk(info.ID, info.DiskIDs[0])
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Error("disk after restore differs from what was written")
			}
			wantVols := before + 1
			if del {
				wantVols = before
			}
			if n := srv.Counts().Volumes; n != wantVols {
				t.Errorf("%d volumes after restore, want %d", n, wantVols)
			}

			// Swap refused: the VM is started while the disk is open.
			w, err = hv.OpenDiskForWrite(ctx, info.ID, info.DiskIDs[0])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteAt(pattern(4*kib, 0x77), 0); err != nil {
				t.Fatal(err)
			}
			srv.SetVMStatus(info.ID, "RUNNING")
			vols := srv.Counts().Volumes
			err = w.Close()
			if !errors.Is(err, hypervisor.ErrConflict) || !strings.Contains(err.Error(), "STOPPED") {
				t.Errorf("Close with the VM running: %v, want ErrConflict saying the VM must be STOPPED", err)
			}
			if n := srv.Counts().Volumes; n != vols {
				t.Errorf("%d volumes after a refused swap, want %d (the imported one deleted)", n, vols)
			}
			if got, _ := srv.ReadDisk(info.ID, info.DiskIDs[0]); !bytes.Equal(got, want) {
				t.Error("a refused swap changed the disk")
			}
			nothingLeft(t, srv)
		})
	}
}

// TestRebuild: two disks, two NICs, one mapped onto another VLAN and one
// disconnected, the cluster taken from Raw.
func TestRebuild(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, nil)
	srv.AddVLAN("vlan-src", 10, "src")
	srv.AddVLAN("vlan-dst", 30, "dst")
	info, err := srv.AddVM(avetest.VMSpec{Name: "vm-src", VCPU: 2, Memory: 512 << 20, Firmware: "UEFI", ClusterID: "cluster-7",
		Disks: []avetest.DiskSpec{{Size: 256 * kib, Boot: 1}, {Size: 128 * kib}},
		NICs:  []avetest.NICSpec{{VLAN: "vlan-src", MAC: "52:54:00:aa:bb:01"}, {VLAN: "vlan-src"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	src, err := hv.VM(ctx, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	spec := hypervisor.CreateSpec{Name: "vm-rebuilt", CPUs: src.CPUs, MemoryB: src.MemoryB, Firmware: src.Firmware,
		Disks: src.Disks, NICs: append([]hypervisor.NIC(nil), src.NICs...), Raw: src.Raw}
	spec.NICs[0].Network = "vlan-dst"
	spec.NICs[1].Connected = false
	vm, err := hv.CreateVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	type nic struct {
		MAC, Network string
		Connected    bool
	}
	var gotNICs []nic
	for _, n := range vm.NICs {
		gotNICs = append(gotNICs, nic{n.MAC, n.Network, n.Connected})
	}
	wantNICs := []nic{{"52:54:00:aa:bb:01", "vlan-dst", true}, {src.NICs[1].MAC, "vlan-src", false}}
	if diff := cmp.Diff(wantNICs, gotNICs); diff != "" {
		t.Errorf("rebuilt NICs (-want +got):\n%s", diff)
	}
	if vm.Placement.Cluster != "cluster-7" || vm.Firmware != "uefi" || vm.CPUs != 2 || vm.Power != hypervisor.PowerStopped {
		t.Errorf("rebuilt VM %+v: want cluster-7, uefi, 2 CPUs, stopped", vm)
	}
	spec.Name = "vm-rebuilt"
	if _, err := hv.CreateVM(ctx, spec); !errors.Is(err, hypervisor.ErrConflict) {
		t.Errorf("CreateVM with a taken name: %v, want ErrConflict", err)
	}
	// Fresh volumes are not downloaded before writing.
	downloads := srv.Requests("download")
	w, err := hv.OpenDiskForWrite(ctx, vm.ID, vm.Disks[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(pattern(128*kib, 1), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := srv.Requests("download"); n != downloads {
		t.Errorf("%d downloads to write a new zero-filled disk, want none", n-downloads)
	}
	if got, _ := srv.ReadDisk(vm.ID, vm.Disks[1].ID); !bytes.Equal(got, pattern(128*kib, 1)) {
		t.Error("rebuilt disk differs from what was written")
	}
	nothingLeft(t, srv)
}

func TestTLS(t *testing.T) {
	srv := avetest.NewServer(avetest.Options{TLS: true, TaskDuration: time.Millisecond})
	defer srv.Close()
	base := ave.Options{BaseURL: srv.URL(), Username: avetest.DefaultUsername, Password: avetest.DefaultPassword,
		TaskPollInterval: time.Millisecond, Logger: quietLogger()}

	hv, err := ave.New(base)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hv.ListVMs(t.Context()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("ListVMs against an untrusted certificate: %v, want a certificate error", err)
	}

	withCA := base
	withCA.CABundle = srv.Certificate()
	hv, err = ave.New(withCA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hv.ListVMs(t.Context()); err != nil {
		t.Errorf("ListVMs with the server's CA: %v", err)
	}

	var logs bytes.Buffer
	insecure := base
	insecure.InsecureSkipVerify = true
	insecure.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	hv, err = ave.New(insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hv.ListVMs(t.Context()); err != nil {
		t.Errorf("ListVMs with InsecureSkipVerify: %v", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "verification is off") {
		t.Errorf("InsecureSkipVerify logged no warning: %q", logs.String())
	}

	both := base
	both.HTTPClient, both.InsecureSkipVerify = http.DefaultClient, true
	if _, err := ave.New(both); err == nil {
		t.Error("New with HTTPClient and InsecureSkipVerify: no error")
	}
}

func TestNewValidates(t *testing.T) {
	for _, o := range []ave.Options{
		{BaseURL: "", Username: "u", Password: "p"},
		{BaseURL: "ftp://x", Username: "u", Password: "p"},
		{BaseURL: "https://aoc"},
		{BaseURL: "https://aoc", Username: "u"},
		{BaseURL: "https://aoc", Token: "t", CABundle: []byte("not pem")},
	} {
		if _, err := ave.New(o); err == nil {
			t.Errorf("New(%v): no error", o)
		}
	}
}

// TestReleaseDuringSlowDownload: Release stops a download that crawls (an
// hour per 64 KiB), deletes the export file and the snapshot, and reads
// waiting for data fail instead of hanging.
func TestReleaseDuringSlowDownload(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, nil)
	info, want := addVM(t, srv, "vm-slow", 512*kib)
	srv.Inject(avetest.Fault{Op: "download", Delay: time.Hour})
	ctx := t.Context()
	s, err := hv.Snapshot(ctx, info.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.OpenDisk(ctx, info.DiskIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	// The first 64 KiB arrive before the delay: served while the rest
	// of the download crawls.
	first := make([]byte, 64*kib)
	if _, err := d.ReadAt(first, 0); err != nil || !bytes.Equal(first, want[:64*kib]) {
		t.Fatalf("ReadAt of the first block during a slow download: %v, equal %v", err, bytes.Equal(first, want[:64*kib]))
	}
	waiting := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(make([]byte, 4096), 400*kib)
		waiting <- err
	}()
	if err := s.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := <-waiting; err == nil {
		t.Error("a ReadAt waiting for data succeeded after Release")
	}
	nothingLeft(t, srv)
}

func TestOptionsFromEnv(t *testing.T) {
	srv := avetest.NewServer(avetest.Options{TLS: true})
	defer srv.Close()
	ca := t.TempDir() + "/ca.pem"
	if err := os.WriteFile(ca, srv.Certificate(), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ave.EnvUsername, avetest.DefaultUsername)
	t.Setenv(ave.EnvPassword, avetest.DefaultPassword)
	t.Setenv(ave.EnvCAFile, ca)
	o, err := ave.OptionsFromEnv(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	o.Logger = quietLogger()
	hv, err := ave.New(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hv.ListVMs(t.Context()); err != nil {
		t.Errorf("ListVMs with options from the environment: %v", err)
	}
	t.Setenv(ave.EnvInsecure, "maybe")
	if _, err := ave.OptionsFromEnv(srv.URL()); err == nil || !strings.Contains(err.Error(), ave.EnvInsecure) {
		t.Errorf("bad %s: %v, want an error naming it", ave.EnvInsecure, err)
	}
}

// TestStalledDownload: a download that stops sending (an hour's pause) is
// ended by the idle timeout and resumed.
func TestStalledDownload(t *testing.T) {
	srv, hv := newBackend(t, avetest.Options{}, func(o *ave.Options) { o.DownloadIdleTimeout = 50 * time.Millisecond })
	info, want := addVM(t, srv, "vm-stall", 512*kib)
	srv.Inject(avetest.Fault{Op: "download", Delay: time.Hour})
	got, err := backupDisk(t.Context(), hv, info.ID, info.DiskIDs[0], 512*kib)
	if err != nil {
		t.Fatalf("backup with a stalled download: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Error("bytes differ after the stalled download was resumed")
	}
	if n := srv.Requests("download"); n != 2 {
		t.Errorf("%d download requests, want 2 (stalled, resumed)", n)
	}
	nothingLeft(t, srv)
}
