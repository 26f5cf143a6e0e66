package avetest_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
)

// wire is a raw client of the server, to test its wire independently of
// package ave.
type wire struct {
	t     *testing.T
	srv   *avetest.Server
	token string
}

func newWire(t *testing.T, opts avetest.Options) *wire {
	srv := avetest.NewServer(opts)
	t.Cleanup(srv.Close)
	w := &wire{t: t, srv: srv}
	var ans struct {
		Data struct{ Token string } `json:"data"`
	}
	if st := w.post("login", map[string]string{"username": avetest.DefaultUsername, "password": avetest.DefaultPassword, "source": "LOCAL"}, &ans); st != 200 {
		t.Fatalf("login: %d", st)
	}
	w.token = ans.Data.Token
	return w
}

// post sends a JSON operation and decodes the answer; it returns the status.
func (w *wire) post(op string, in, out any) int {
	w.t.Helper()
	b, _ := json.Marshal(in)
	req, _ := http.NewRequest("POST", w.srv.URL()+"/v2/api/"+op, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if w.token != "" {
		req.Header.Set("Authorization", w.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			w.t.Fatalf("%s: decode answer: %v", op, err)
		}
	}
	return resp.StatusCode
}

func (w *wire) names(op string, q map[string]any) []string {
	w.t.Helper()
	var got []struct{ Name string }
	if st := w.post(op, q, &got); st != 200 {
		w.t.Fatalf("%s %v: status %d", op, q, st)
	}
	var out []string
	for _, g := range got {
		out = append(out, g.Name)
	}
	return out
}

func TestWhereAndPaging(t *testing.T) {
	w := newWire(t, avetest.Options{})
	ids := map[string]avetest.VMInfo{}
	for i, n := range []string{"web-1", "web-2", "db-1", "db-2", "cache"} {
		info, err := w.srv.AddVM(avetest.VMSpec{Name: n, ClusterID: []string{"c1", "c2"}[i%2], Disks: []avetest.DiskSpec{{Size: 65536}}})
		if err != nil {
			t.Fatal(err)
		}
		ids[n] = info
	}
	for _, tc := range []struct {
		name string
		q    map[string]any
		want []string
	}{
		{"all by name", map[string]any{"orderBy": "name_ASC"}, []string{"cache", "db-1", "db-2", "web-1", "web-2"}},
		{"desc, paged", map[string]any{"orderBy": "name_DESC", "first": 2, "skip": 1}, []string{"web-1", "db-2"}},
		{"id", map[string]any{"where": map[string]any{"id": ids["db-1"].ID}}, []string{"db-1"}},
		{"id_in", map[string]any{"where": map[string]any{"id_in": []string{ids["web-2"].ID, ids["cache"].ID}}, "orderBy": "name_ASC"}, []string{"cache", "web-2"}},
		{"name_contains", map[string]any{"where": map[string]any{"name_contains": "web"}, "orderBy": "name_ASC"}, []string{"web-1", "web-2"}},
		{"nested cluster", map[string]any{"where": map[string]any{"cluster": map[string]any{"id": "c2"}}, "orderBy": "name_ASC"}, []string{"db-2", "web-2"}},
		{"OR", map[string]any{"where": map[string]any{"OR": []any{map[string]any{"name": "cache"}, map[string]any{"name_starts_with": "db"}}}, "orderBy": "name_ASC"}, []string{"cache", "db-1", "db-2"}},
		{"NOT", map[string]any{"where": map[string]any{"NOT": map[string]any{"name_contains": "-"}}}, []string{"cache"}},
		{"AND", map[string]any{"where": map[string]any{"AND": []any{map[string]any{"name_contains": "1"}, map[string]any{"cluster": map[string]any{"id": "c1"}}}}, "orderBy": "name_ASC"}, []string{"db-1", "web-1"}},
		{"skip past the end", map[string]any{"skip": 10}, nil},
	} {
		if diff := cmp.Diff(tc.want, w.names("get-vms", tc.q)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
	}
	// Disks of one VM through the nested vm filter.
	var disks []struct{ ID string }
	w.post("get-vm-disks", map[string]any{"where": map[string]any{"vm": map[string]any{"id": ids["db-2"].ID}}}, &disks)
	if len(disks) != 1 || disks[0].ID != ids["db-2"].DiskIDs[0] {
		t.Errorf("get-vm-disks of db-2: %+v, want %s", disks, ids["db-2"].DiskIDs[0])
	}
	// Errors: unknown field, no token, GET.
	var e struct {
		Status int
		Code   string
		Path   string
	}
	if st := w.post("get-vms", map[string]any{"where": map[string]any{"colour": "red"}}, &e); st != 400 || e.Code != "BAD_REQUEST" || e.Path != "/v2/api/get-vms" {
		t.Errorf("unknown field: %d %+v", st, e)
	}
	w.token = ""
	if st := w.post("get-vms", nil, &e); st != 401 || e.Status != 401 {
		t.Errorf("no token: %d %+v", st, e)
	}
}

func TestTasksProgressAndPowerRules(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	w := newWire(t, avetest.Options{TaskDuration: 40 * time.Second, Now: clock})
	info, _ := w.srv.AddVM(avetest.VMSpec{Name: "vm", Disks: []avetest.DiskSpec{{Size: 65536}}})
	var e struct{ Code string }
	if st := w.post("start-vm", map[string]any{"where": map[string]any{"id": info.ID}}, &e); st != 400 || e.Code != "VM_STATUS_NOT_ALLOWED" {
		t.Errorf("start of a running VM: %d %s", st, e.Code)
	}
	var ans []struct {
		TaskID string `json:"task_id"`
	}
	w.post("poweroff-vm", map[string]any{"where": map[string]any{"id": info.ID}}, &ans)
	type state struct {
		Status   string
		Progress float64
		VM       string
	}
	var got []state
	for _, step := range []time.Duration{0, 20 * time.Second, 20 * time.Second} {
		advance(step)
		var ts []struct {
			Status   string
			Progress float64
		}
		w.post("get-tasks", map[string]any{"where": map[string]any{"id": ans[0].TaskID}}, &ts)
		vm, _ := w.srv.VMStatus(info.ID)
		got = append(got, state{ts[0].Status, ts[0].Progress, vm})
	}
	want := []state{{"PENDING", 0, "RUNNING"}, {"EXECUTING", 0.5, "RUNNING"}, {"SUCCESSED", 1, "STOPPED"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("task and VM states (-want +got):\n%s", diff)
	}
}

// TestExportUploadImportSwap goes the whole data path by hand: snapshot,
// export, ranged download, chunked upload, import, swap.
func TestExportUploadImportSwap(t *testing.T) {
	const size = 300 << 10
	w := newWire(t, avetest.Options{ChunkSize: 128 << 10, TaskDuration: time.Millisecond})
	info, _ := w.srv.AddVM(avetest.VMSpec{Name: "vm", ToolsRunning: false, Disks: []avetest.DiskSpec{{Size: size}}})
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	w.srv.GuestWrite(info.ID, info.DiskIDs[0], 0, data)
	var e struct{ Code string }
	if st := w.post("create-vm-snapshot", map[string]any{"data": []any{map[string]any{"vm_id": info.ID, "consistent_type": "FILE_SYSTEM_CONSISTENT"}}}, &e); st != 400 || e.Code != "VM_TOOLS_NOT_RUNNING" {
		t.Errorf("FS-consistent without tools: %d %s", st, e.Code)
	}
	var snap []struct {
		Data struct{ ID string } `json:"data"`
	}
	w.post("create-vm-snapshot", map[string]any{"data": []any{map[string]any{"vm_id": info.ID, "name": "s"}}}, &snap)
	w.srv.GuestWrite(info.ID, info.DiskIDs[0], 0, make([]byte, 4096)) // after the snapshot
	var snaps []struct {
		VMDisks []struct {
			VolumeLocalID string `json:"vm_volume_local_id"`
		} `json:"vm_disks"`
	}
	w.post("get-vm-snapshots", map[string]any{"where": map[string]any{"id": snap[0].Data.ID}}, &snaps)
	var ex []struct {
		Data struct{ ID string } `json:"data"`
	}
	w.post("export-vm-volume", map[string]any{"data": []any{map[string]any{"vm_snapshot_id": snap[0].Data.ID, "vm_volume_local_id": snaps[0].VMDisks[0].VolumeLocalID, "type": "RAW"}}}, &ex)
	time.Sleep(5 * time.Millisecond)
	var links []struct{ Link string }
	w.post("get-export-file-download-links", map[string]any{"where": map[string]any{"id": ex[0].Data.ID}}, &links)
	if len(links) != 1 {
		t.Fatalf("links: %+v", links)
	}
	req, _ := http.NewRequest("GET", links[0].Link, nil)
	req.Header.Set("Range", "bytes=100-")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 206 || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-%d/%d", size-1, size) || !bytes.Equal(got, data[100:]) {
		t.Errorf("ranged download: %d %q, %d bytes, equal %v", resp.StatusCode, resp.Header.Get("Content-Range"), len(got), bytes.Equal(got, data[100:]))
	}

	// Upload the snapshot's content in chunks and swap it in.
	up := func(fields map[string]string, chunk []byte) (int, map[string]any) {
		var body bytes.Buffer
		mw := multipart.NewWriter(&body)
		for k, v := range fields {
			mw.WriteField(k, v)
		}
		if chunk != nil {
			fw, _ := mw.CreateFormFile("file", "x")
			fw.Write(chunk)
		}
		mw.Close()
		req, _ := http.NewRequest("POST", w.srv.URL()+"/v2/api/upload-elf-file", &body)
		req.Header.Set("Content-Type", mw.FormDataContentType())
		req.Header.Set("Authorization", w.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var ans []struct{ Data map[string]any }
		json.NewDecoder(resp.Body).Decode(&ans)
		if len(ans) == 0 {
			return resp.StatusCode, nil
		}
		return resp.StatusCode, ans[0].Data
	}
	_, u := up(map[string]string{"name": "restored", "size": fmt.Sprint(size)}, nil)
	id := u["id"].(string)
	if st, _ := up(map[string]string{"upload_task_id": id, "chunk_index": "1"}, data[128<<10:256<<10]); st != 400 {
		t.Errorf("chunk out of order: %d, want 400", st)
	}
	for i := 0; i*(128<<10) < size; i++ {
		st, u := up(map[string]string{"upload_task_id": id, "chunk_index": fmt.Sprint(i)}, data[i*(128<<10):min((i+1)*(128<<10), size)])
		if st != 200 || int(u["current_chunk"].(float64)) != i+1 {
			t.Fatalf("chunk %d: %d %v", i, st, u)
		}
	}
	var imp []struct {
		Data struct{ ID string } `json:"data"`
	}
	w.post("import-vm-volume", map[string]any{"data": []any{map[string]any{"cluster_id": "cluster-1", "name": "restored", "upload_task_id": id}}}, &imp)
	swap := map[string]any{"where": map[string]any{"id": info.ID}, "data": map[string]any{"vm_disk_id": info.DiskIDs[0], "vm_volume_id": imp[0].Data.ID}}
	if st := w.post("update-vm-disk", swap, &e); st != 400 || e.Code != "VM_STATUS_NOT_ALLOWED" {
		t.Errorf("swap on a running VM: %d %s", st, e.Code)
	}
	w.srv.SetVMStatus(info.ID, "STOPPED")
	if st := w.post("update-vm-disk", swap, nil); st != 200 {
		t.Fatalf("swap: %d", st)
	}
	if disk, _ := w.srv.ReadDisk(info.ID, info.DiskIDs[0]); !bytes.Equal(disk, data) {
		t.Error("disk after swap differs from the upload")
	}
	if st := w.post("delete-vm-volume", map[string]any{"where": map[string]any{"id": imp[0].Data.ID}}, &e); st != 400 || !strings.Contains(e.Code, "MOUNTED") {
		t.Errorf("delete of a mounted volume: %d %s", st, e.Code)
	}
}
