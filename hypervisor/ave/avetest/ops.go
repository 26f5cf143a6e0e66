package avetest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

type handler func(s *Server, body json.RawMessage, f *Fault) (any, *apiError)

var handlers map[string]handler

func init() {
	handlers = map[string]handler{
		"get-vms":                        listOf(func(s *Server) []any { return collect(s.vms, s.vmWire) }),
		"get-vm-disks":                   listOf(func(s *Server) []any { return collect(s.disks, s.diskWire) }),
		"get-vm-volumes":                 listOf(func(s *Server) []any { return collect(s.volumes, s.volumeWire) }),
		"get-vm-nics":                    listOf(func(s *Server) []any { return collect(s.nics, s.nicWire) }),
		"get-vm-snapshots":               listOf(func(s *Server) []any { return collect(s.snapshots, s.snapshotWire) }),
		"get-tasks":                      listOf(func(s *Server) []any { return collect(s.tasks, s.taskWire) }),
		"get-labels":                     listOf(func(s *Server) []any { return collect(s.labels, labelWire) }),
		"get-vlans":                      listOf(func(s *Server) []any { return collect(s.vlans, vlanWire) }),
		"get-export-files":               listOf(func(s *Server) []any { return collect(s.exports, exportWire) }),
		"get-export-file-download-links": (*Server).downloadLinks,
		"create-vm-snapshot":             (*Server).createSnapshot,
		"delete-vm-snapshot":             (*Server).deleteSnapshot,
		"export-vm-volume":               (*Server).exportVolume,
		"delete-export-file":             (*Server).deleteExport,
		"import-vm-volume":               (*Server).importVolume,
		"delete-vm-volume":               (*Server).deleteVolume,
		"update-vm-disk":                 (*Server).updateDisk,
		"start-vm":                       power("start-vm", "RUNNING", "STOPPED", "SUSPENDED"),
		"shutdown-vm":                    power("shutdown-vm", "STOPPED", "RUNNING", "SUSPENDED"),
		"poweroff-vm":                    power("poweroff-vm", "STOPPED", "RUNNING", "SUSPENDED"),
		"create-vm":                      (*Server).createVM,
		"delete-vm":                      (*Server).deleteVM,
	}
}

func collect[T any](m map[string]*T, wire func(*T) map[string]any) []any {
	out := make([]any, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, wire(m[k]))
	}
	return out
}

func labelWire(l *label) map[string]any {
	return map[string]any{"id": l.ID, "key": l.Key, "value": l.Value, "vms": refs(l.VMs)}
}

func vlanWire(v *vlan) map[string]any {
	return map[string]any{"id": v.ID, "vlan_id": v.VLANID, "name": v.Name}
}

func exportWire(e *exportFile) map[string]any {
	return map[string]any{"id": e.ID, "filename": e.Filename, "size": e.data.size, "ready": e.ready}
}

func listOf(all func(s *Server) []any) handler {
	return func(s *Server, body json.RawMessage, _ *Fault) (any, *apiError) {
		s.settle()
		return runQuery(body, all(s))
	}
}

// mutation is one element of a mutation's answer.
type mutation struct {
	TaskID *string `json:"task_id"`
	Data   any     `json:"data"`
}

func done(task string, data any) mutation {
	if task == "" {
		return mutation{Data: data}
	}
	return mutation{TaskID: &task, Data: data}
}

// whereBody is the body of a mutation addressed by a where filter.
type whereBody struct {
	Where map[string]any  `json:"where"`
	Data  json.RawMessage `json:"data"`
}

func decode(body json.RawMessage, v any) *apiError {
	if err := json.Unmarshal(body, v); err != nil {
		return errorf(400, "BAD_REQUEST", "body: %v", err)
	}
	return nil
}

// matching returns the ids of records of m that where selects.
func matching[T any](m map[string]*T, wire func(*T) map[string]any, where map[string]any) ([]string, *apiError) {
	if len(where) == 0 {
		return nil, errorf(400, "BAD_REQUEST", "a mutation needs a where filter")
	}
	var ids []string
	for _, k := range sortedKeys(m) {
		ok, err := match(wire(m[k]), where)
		if err != nil {
			return nil, errorf(400, "BAD_REQUEST", "where: %v", err)
		}
		if ok {
			ids = append(ids, k)
		}
	}
	return ids, nil
}

func (s *Server) createSnapshot(body json.RawMessage, f *Fault) (any, *apiError) {
	var in struct {
		Data []struct {
			VMID           string `json:"vm_id"`
			Name           string `json:"name"`
			ConsistentType string `json:"consistent_type"`
		} `json:"data"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.settle()
	var out []mutation
	for _, d := range in.Data {
		v := s.vms[d.VMID]
		if v == nil {
			return nil, notFound("vm", d.VMID)
		}
		switch d.ConsistentType {
		case "", "CRASH_CONSISTENT":
			d.ConsistentType = "CRASH_CONSISTENT"
		case "FILE_SYSTEM_CONSISTENT":
			if v.Status != "RUNNING" || v.Tools != "RUNNING" {
				return nil, errorf(400, "VM_TOOLS_NOT_RUNNING", "vm %q: file-system consistency needs a running VM with running guest tools", v.ID)
			}
		default:
			return nil, errorf(400, "INVALID_CONSISTENT_TYPE", "unknown consistent_type %q", d.ConsistentType)
		}
		sn := &snapshot{ID: s.newID("snapshot"), LocalID: randomHex(8), Name: d.Name, VMID: v.ID,
			Consistent: d.ConsistentType, Status: "CREATING", VCPU: v.VCPU, Memory: v.Memory, Firmware: v.Firmware}
		for _, nid := range v.NICs {
			sn.NICs = append(sn.NICs, s.nicWire(s.nics[nid]))
		}
		for _, did := range v.Disks {
			dk := s.disks[did]
			sd := snapDisk{Type: dk.Type, Bus: dk.Bus, Boot: dk.Boot, Index: dk.Index, SnapshotLocalID: randomHex(8)}
			if vol := s.volumes[dk.VolumeID]; vol != nil {
				sd.Size, sd.VolumeLocalID, sd.data = vol.data.size, vol.LocalID, vol.data.clone()
			}
			sn.Disks = append(sn.Disks, sd)
		}
		s.snapshots[sn.ID] = sn
		tid := s.newTask("create-vm-snapshot", f, func(failed bool) {
			if failed {
				delete(s.snapshots, sn.ID)
			} else {
				sn.Status = "CREATED"
			}
		})
		out = append(out, done(tid, s.snapshotWire(sn)))
	}
	return out, nil
}

func (s *Server) deleteSnapshot(body json.RawMessage, f *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	ids, e := matching(s.snapshots, s.snapshotWire, in.Where)
	if e != nil {
		return nil, e
	}
	out := []mutation{}
	for _, id := range ids {
		w := s.snapshotWire(s.snapshots[id])
		delete(s.snapshots, id)
		out = append(out, done(s.newTask("delete-vm-snapshot", f, nil), w))
	}
	return out, nil
}

func (s *Server) exportVolume(body json.RawMessage, f *Fault) (any, *apiError) {
	var in struct {
		Data []struct {
			VolumeID      string `json:"vm_volume_id"`
			SnapshotID    string `json:"vm_snapshot_id"`
			VolumeLocalID string `json:"vm_volume_local_id"`
			Type          string `json:"type"`
		} `json:"data"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.settle()
	var out []mutation
	for _, d := range in.Data {
		if d.Type != "RAW" {
			return nil, errorf(400, "EXPORT_TYPE_NOT_SUPPORTED", "export type %q: this server exports RAW only", d.Type)
		}
		var data *sparse
		name := ""
		switch {
		case d.VolumeID != "":
			vol := s.volumes[d.VolumeID]
			if vol == nil {
				return nil, notFound("vm_volume", d.VolumeID)
			}
			data, name = vol.data.clone(), vol.Name
		case d.SnapshotID != "":
			sn := s.snapshots[d.SnapshotID]
			if sn == nil {
				return nil, notFound("vm_snapshot", d.SnapshotID)
			}
			for _, sd := range sn.Disks {
				if sd.data != nil && sd.VolumeLocalID == d.VolumeLocalID {
					data, name = sd.data, sn.Name+"-"+sd.VolumeLocalID
				}
			}
			if data == nil {
				return nil, notFound("vm_snapshot_volume", d.VolumeLocalID)
			}
		default:
			return nil, errorf(400, "BAD_REQUEST", "export-vm-volume needs vm_volume_id or vm_snapshot_id")
		}
		ex := &exportFile{ID: s.newID("exportfile"), Filename: name + ".raw", secret: randomHex(16), data: data}
		s.exports[ex.ID] = ex
		tid := s.newTask("export-vm-volume", f, func(failed bool) {
			if failed {
				delete(s.exports, ex.ID)
			} else {
				ex.ready = true
			}
		})
		out = append(out, done(tid, exportWire(ex)))
	}
	return out, nil
}

func (s *Server) downloadLinks(body json.RawMessage, _ *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	s.settle()
	ids, e := matching(s.exports, exportWire, in.Where)
	if e != nil {
		return nil, e
	}
	out := []map[string]any{}
	for _, id := range ids {
		ex := s.exports[id]
		if !ex.ready {
			continue
		}
		out = append(out, map[string]any{"filename": ex.Filename,
			"link": fmt.Sprintf("%s/v2/download/%s?secret=%s", s.hs.URL, ex.ID, ex.secret)})
	}
	return out, nil
}

func (s *Server) deleteExport(body json.RawMessage, f *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	ids, e := matching(s.exports, exportWire, in.Where)
	if e != nil {
		return nil, e
	}
	out := []mutation{}
	for _, id := range ids {
		w := exportWire(s.exports[id])
		delete(s.exports, id)
		out = append(out, done("", w))
	}
	return out, nil
}

func (s *Server) importVolume(body json.RawMessage, f *Fault) (any, *apiError) {
	var in struct {
		Data []struct {
			ClusterID     string `json:"cluster_id"`
			Name          string `json:"name"`
			UploadTaskID  string `json:"upload_task_id"`
			StoragePolicy string `json:"storage_policy"`
		} `json:"data"`
	}
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	var out []mutation
	for _, d := range in.Data {
		u := s.uploads[d.UploadTaskID]
		if u == nil {
			return nil, notFound("upload_task", d.UploadTaskID)
		}
		if !u.complete() {
			return nil, errorf(400, "UPLOAD_NOT_COMPLETE", "upload %q has %d of its chunks", u.ID, u.Current)
		}
		if d.ClusterID == "" || d.Name == "" {
			return nil, errorf(400, "BAD_REQUEST", "import-vm-volume needs cluster_id and name")
		}
		delete(s.uploads, u.ID)
		vol := s.newVolume(d.Name, d.ClusterID, u.data)
		if d.StoragePolicy != "" {
			vol.Policy = d.StoragePolicy
		}
		tid := s.newTask("import-vm-volume", f, func(failed bool) {
			if failed {
				delete(s.volumes, vol.ID)
			}
		})
		out = append(out, done(tid, s.volumeWire(vol)))
	}
	return out, nil
}

func (s *Server) deleteVolume(body json.RawMessage, f *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	ids, e := matching(s.volumes, s.volumeWire, in.Where)
	if e != nil {
		return nil, e
	}
	for _, id := range ids {
		if vm := s.mountedBy(id); vm != "" {
			return nil, errorf(400, "VM_VOLUME_MOUNTED", "volume %q is mounted by vm %q", id, vm)
		}
	}
	out := []mutation{}
	for _, id := range ids {
		w := s.volumeWire(s.volumes[id])
		delete(s.volumes, id)
		out = append(out, done(s.newTask("delete-vm-volume", f, nil), w))
	}
	return out, nil
}

func (s *Server) updateDisk(body json.RawMessage, f *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	var data struct {
		DiskID   string `json:"vm_disk_id"`
		VolumeID string `json:"vm_volume_id"`
	}
	if e := decode(in.Data, &data); e != nil {
		return nil, e
	}
	s.settle()
	ids, e := matching(s.vms, s.vmWire, in.Where)
	if e != nil {
		return nil, e
	}
	if len(ids) != 1 {
		return nil, errorf(404, "VM_NOT_FOUND", "update-vm-disk: where selects %d VMs, want 1", len(ids))
	}
	v := s.vms[ids[0]]
	if v.Status != "STOPPED" {
		return nil, errorf(400, "VM_STATUS_NOT_ALLOWED", "vm %q is %s; a disk's volume can be swapped only while the VM is STOPPED", v.ID, v.Status)
	}
	d := s.disks[data.DiskID]
	if d == nil || d.VMID != v.ID {
		return nil, notFound("vm_disk", data.DiskID)
	}
	vol := s.volumes[data.VolumeID]
	if vol == nil {
		return nil, notFound("vm_volume", data.VolumeID)
	}
	if by := s.mountedBy(vol.ID); by != "" && vol.ID != d.VolumeID {
		return nil, errorf(400, "VM_VOLUME_MOUNTED", "volume %q is mounted by vm %q", vol.ID, by)
	}
	d.VolumeID = vol.ID
	return []mutation{done(s.newTask("update-vm-disk", f, nil), s.vmWire(v))}, nil
}

func power(op, to string, from ...string) handler {
	return func(s *Server, body json.RawMessage, f *Fault) (any, *apiError) {
		var in whereBody
		if e := decode(body, &in); e != nil {
			return nil, e
		}
		s.settle()
		ids, e := matching(s.vms, s.vmWire, in.Where)
		if e != nil {
			return nil, e
		}
		if len(ids) == 0 {
			return nil, errorf(404, "VM_NOT_FOUND", "%s: no VM matches", op)
		}
		var out []mutation
		for _, id := range ids {
			v := s.vms[id]
			allowed := false
			for _, st := range from {
				allowed = allowed || v.Status == st
			}
			if !allowed {
				return nil, errorf(400, "VM_STATUS_NOT_ALLOWED", "%s: vm %q is %s", op, v.ID, v.Status)
			}
			tid := s.newTask(op, f, func(failed bool) {
				if !failed {
					v.Status = to
				}
			})
			out = append(out, done(tid, s.vmWire(v)))
		}
		return out, nil
	}
}

type createVMIn struct {
	ClusterID  string `json:"cluster_id"`
	HostID     string `json:"host_id"`
	Name       string `json:"name"`
	VCPU       int    `json:"vcpu"`
	CPUCores   int    `json:"cpu_cores"`
	CPUSockets int    `json:"cpu_sockets"`
	Memory     int64  `json:"memory"`
	Firmware   string `json:"firmware"`
	HA         bool   `json:"ha"`
	Status     string `json:"status"`
	VMNICs     []struct {
		VLAN    string `json:"connect_vlan_id"`
		MAC     string `json:"mac_address"`
		Model   string `json:"model"`
		Enabled *bool  `json:"enabled"`
	} `json:"vm_nics"`
	VMDisks struct {
		Mount []struct {
			VolumeID string `json:"vm_volume_id"`
			Bus      string `json:"bus"`
			Boot     int    `json:"boot"`
			Index    *int   `json:"index"`
		} `json:"mount_disks"`
		New []struct {
			Volume struct {
				Name   string `json:"name"`
				Size   int64  `json:"size"`
				Policy string `json:"elf_storage_policy"`
			} `json:"vm_volume"`
			Bus  string `json:"bus"`
			Boot int    `json:"boot"`
		} `json:"mount_new_create_disks"`
	} `json:"vm_disks"`
}

func (s *Server) createVM(body json.RawMessage, f *Fault) (any, *apiError) {
	var in []createVMIn
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	var out []mutation
	for _, c := range in {
		if c.ClusterID == "" || c.Name == "" || c.VCPU <= 0 || c.Memory <= 0 {
			return nil, errorf(400, "BAD_REQUEST", "create-vm needs cluster_id, name, vcpu and memory")
		}
		for _, v := range s.vms {
			if v.Name == c.Name {
				return nil, errorf(400, "VM_NAME_DUPLICATE", "a VM named %q exists", c.Name)
			}
		}
		for _, n := range c.VMNICs {
			if s.vlans[n.VLAN] == nil {
				return nil, notFound("vlan", n.VLAN)
			}
		}
		for _, m := range c.VMDisks.Mount {
			if s.volumes[m.VolumeID] == nil {
				return nil, notFound("vm_volume", m.VolumeID)
			}
			if by := s.mountedBy(m.VolumeID); by != "" {
				return nil, errorf(400, "VM_VOLUME_MOUNTED", "volume %q is mounted by vm %q", m.VolumeID, by)
			}
		}
		for _, n := range c.VMDisks.New {
			if n.Volume.Size <= 0 || n.Volume.Size%512 != 0 {
				return nil, errorf(400, "BAD_REQUEST", "new volume %q: size %d", n.Volume.Name, n.Volume.Size)
			}
		}
		fw := strings.ToUpper(c.Firmware)
		if fw == "" {
			fw = "BIOS"
		}
		if fw != "BIOS" && fw != "UEFI" {
			return nil, errorf(400, "BAD_REQUEST", "firmware %q", c.Firmware)
		}
		v := &vm{ID: s.newID("vm"), LocalID: randomHex(8), Name: c.Name, Status: "STOPPED", VCPU: c.VCPU,
			Cores: c.CPUCores, Sockets: c.CPUSockets, Memory: c.Memory, Firmware: fw, HA: c.HA,
			ClusterID: c.ClusterID, HostID: c.HostID, GuestOS: "UNKNOWN", Tools: "NOT_INSTALLED"}
		var created []string
		addDisk := func(volID, bus string, boot int) {
			d := &vmDisk{ID: s.newID("vmdisk"), VMID: v.ID, Type: "DISK", Bus: bus, Boot: boot, Index: len(v.Disks), VolumeID: volID}
			if d.Bus == "" {
				d.Bus = "VIRTIO"
			}
			s.disks[d.ID] = d
			v.Disks = append(v.Disks, d.ID)
		}
		for _, m := range c.VMDisks.Mount {
			addDisk(m.VolumeID, m.Bus, m.Boot)
		}
		for i, n := range c.VMDisks.New {
			name := n.Volume.Name
			if name == "" {
				name = fmt.Sprintf("%s-disk%d", c.Name, i)
			}
			vol := s.newVolume(name, c.ClusterID, newSparse(n.Volume.Size))
			if n.Volume.Policy != "" {
				vol.Policy = n.Volume.Policy
			}
			created = append(created, vol.ID)
			addDisk(vol.ID, n.Bus, n.Boot)
		}
		for _, n := range c.VMNICs {
			nic := &vmNIC{ID: s.newID("vmnic"), LocalID: randomHex(8), VMID: v.ID, MAC: n.MAC, Model: n.Model, VLAN: n.VLAN, Enabled: n.Enabled == nil || *n.Enabled}
			if nic.MAC == "" {
				nic.MAC = s.newMAC()
			}
			if nic.Model == "" {
				nic.Model = "VIRTIO"
			}
			s.nics[nic.ID] = nic
			v.NICs = append(v.NICs, nic.ID)
		}
		s.vms[v.ID] = v
		start := c.Status == "RUNNING"
		tid := s.newTask("create-vm", f, func(failed bool) {
			if failed {
				s.removeVM(v.ID, false)
				for _, id := range created {
					delete(s.volumes, id)
				}
			} else if start {
				v.Status = "RUNNING"
			}
		})
		out = append(out, done(tid, s.vmWire(v)))
	}
	return out, nil
}

func (s *Server) deleteVM(body json.RawMessage, f *Fault) (any, *apiError) {
	var in whereBody
	if e := decode(body, &in); e != nil {
		return nil, e
	}
	ids, e := matching(s.vms, s.vmWire, in.Where)
	if e != nil {
		return nil, e
	}
	out := []mutation{}
	for _, id := range ids {
		w := s.vmWire(s.vms[id])
		s.removeVM(id, true)
		out = append(out, done(s.newTask("delete-vm", f, nil), w))
	}
	return out, nil
}

// uploadChunk serves upload-elf-file (multipart).
func (s *Server) uploadChunk(w http.ResponseWriter, r *http.Request) {
	fail := func(e *apiError) { writeJSON(w, e.Status, e.withPath(r)) }
	if err := r.ParseMultipartForm(8 << 20); err != nil {
		fail(errorf(400, "BAD_REQUEST", "upload-elf-file wants a multipart form: %v", err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := r.FormValue("upload_task_id")
	if id == "" {
		size, err := strconv.ParseInt(r.FormValue("size"), 10, 64)
		name := r.FormValue("name")
		if err != nil || size <= 0 || size%512 != 0 || name == "" {
			fail(errorf(400, "BAD_REQUEST", "upload-elf-file: need name and a size that is a positive multiple of 512"))
			return
		}
		u := &upload{ID: s.newID("upload"), Name: name, Size: size, ChunkSize: s.opts.ChunkSize, data: newSparse(size)}
		s.uploads[u.ID] = u
		writeJSON(w, 200, []mutation{done("", s.uploadWire(u))})
		return
	}
	u := s.uploads[id]
	if u == nil {
		fail(notFound("upload_task", id))
		return
	}
	idx, err := strconv.Atoi(r.FormValue("chunk_index"))
	if err != nil || idx != u.Current {
		fail(errorf(400, "UPLOAD_CHUNK_OUT_OF_ORDER", "upload %q expects chunk %d, got %q", u.ID, u.Current, r.FormValue("chunk_index")))
		return
	}
	file, _, err := r.FormFile("file")
	if err != nil {
		fail(errorf(400, "BAD_REQUEST", "upload-elf-file: no file part: %v", err))
		return
	}
	defer file.Close()
	p, err := io.ReadAll(file)
	if err != nil {
		fail(errorf(400, "BAD_REQUEST", "upload-elf-file: %v", err))
		return
	}
	off := int64(idx) * u.ChunkSize
	want := min(u.ChunkSize, u.Size-off)
	if int64(len(p)) != want {
		fail(errorf(400, "UPLOAD_CHUNK_SIZE", "chunk %d of upload %q has %d bytes, want %d", idx, u.ID, len(p), want))
		return
	}
	u.data.writeAt(p, off)
	u.Current++
	writeJSON(w, 200, []mutation{done("", s.uploadWire(u))})
}

func (s *Server) uploadWire(u *upload) map[string]any {
	st := "UPLOADING"
	if u.complete() {
		st = "SUCCESSED"
	}
	return map[string]any{"id": u.ID, "name": u.Name, "size": u.Size, "chunk_size": u.ChunkSize, "current_chunk": u.Current, "status": st}
}

// serveDownload serves an export file's bytes, with Range unless
// Options.NoRange.
func (s *Server) serveDownload(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.requests["download"]++
	f := s.takeFault("download")
	s.settle()
	ex := s.exports[r.PathValue("id")]
	s.mu.Unlock()
	if ex == nil || !ex.ready || r.URL.Query().Get("secret") != ex.secret {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if f != nil && f.Status != 0 {
		http.Error(w, "injected failure", f.Status)
		return
	}
	start, end := int64(0), ex.data.size // [start, end)
	status := http.StatusOK
	if rg := r.Header.Get("Range"); rg != "" && !s.opts.NoRange {
		a, b, ok := parseRange(rg, ex.data.size)
		if !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", ex.data.size))
			http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
			return
		}
		start, end, status = a, b, http.StatusPartialContent
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b-1, ex.data.size))
	}
	if !s.opts.NoRange {
		w.Header().Set("Accept-Ranges", "bytes")
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(end-start, 10))
	w.WriteHeader(status)
	buf := make([]byte, BlockSize)
	sent := int64(0)
	for off := start; off < end; {
		n := min(int64(len(buf)), end-off)
		ex.data.readAt(buf[:n], off)
		if f != nil && f.DropAfter > 0 && sent+n > f.DropAfter {
			w.Write(buf[:f.DropAfter-sent])
			w.(http.Flusher).Flush()
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		if _, err := w.Write(buf[:n]); err != nil {
			return
		}
		sent += n
		off += n
		if f != nil && f.Delay > 0 {
			w.(http.Flusher).Flush()
			select {
			case <-time.After(f.Delay):
			case <-r.Context().Done():
				return
			}
		}
	}
}

// parseRange parses a single "bytes=a-b" or "bytes=a-" range.
func parseRange(h string, size int64) (int64, int64, bool) {
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	as, bs, ok := strings.Cut(spec, "-")
	if !ok || as == "" {
		return 0, 0, false
	}
	a, err := strconv.ParseInt(as, 10, 64)
	if err != nil || a < 0 || a >= size {
		return 0, 0, false
	}
	b := size
	if bs != "" {
		x, err := strconv.ParseInt(bs, 10, 64)
		if err != nil || x < a {
			return 0, 0, false
		}
		b = min(x+1, size)
	}
	return a, b, true
}
