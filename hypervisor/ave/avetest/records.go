package avetest

import (
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

type vm struct {
	ID, LocalID, Name, Status string
	VCPU, Cores, Sockets      int
	Memory                    int64
	Firmware                  string
	HA                        bool
	ClusterID, HostID         string
	Disks, NICs               []string
	GuestOS, Tools            string
}

type vmDisk struct {
	ID, VMID, Type, Bus string
	Boot, Index         int
	VolumeID            string
}

type volume struct {
	ID, LocalID, Name, Policy, ClusterID string
	data                                 *sparse
}

type vmNIC struct {
	ID, LocalID, VMID, MAC, Model, VLAN string
	Enabled                             bool
}

type label struct {
	ID, Key, Value string
	VMs            []string
}

type vlan struct {
	ID     string
	VLANID int
	Name   string
}

type snapDisk struct {
	Type, Bus       string
	Boot, Index     int
	Size            int64
	VolumeLocalID   string
	SnapshotLocalID string
	data            *sparse
}

type snapshot struct {
	ID, LocalID, Name, VMID, Consistent, Status string
	VCPU                                        int
	Memory                                      int64
	Firmware                                    string
	NICs                                        []map[string]any
	Disks                                       []snapDisk
}

type task struct {
	ID, Op     string
	start      time.Time
	fail       string
	hang       bool
	done       func(failed bool)
	finished   bool
	status     string
	progress   float64
	failDetail string
}

type exportFile struct {
	ID, Filename, secret string
	ready                bool
	data                 *sparse
}

type upload struct {
	ID, Name  string
	Size      int64
	ChunkSize int64
	Current   int
	data      *sparse
}

func (u *upload) complete() bool { return int64(u.Current)*u.ChunkSize >= u.Size }

func ref(id string) map[string]any { return map[string]any{"id": id} }

func refs(ids []string) []map[string]any {
	out := []map[string]any{}
	for _, id := range ids {
		out = append(out, ref(id))
	}
	return out
}

func (s *Server) vmWire(v *vm) map[string]any {
	var labels []string
	for _, id := range sortedKeys(s.labels) {
		for _, x := range s.labels[id].VMs {
			if x == v.ID {
				labels = append(labels, id)
			}
		}
	}
	return map[string]any{
		"id": v.ID, "local_id": v.LocalID, "name": v.Name, "status": v.Status,
		"vcpu": v.VCPU, "cpu": map[string]any{"cores": v.Cores, "sockets": v.Sockets},
		"memory": v.Memory, "firmware": v.Firmware, "ha": v.HA,
		"cluster": ref(v.ClusterID), "host": ref(v.HostID),
		"vm_disks": refs(v.Disks), "vm_nics": refs(v.NICs), "labels": refs(labels),
		"guest_os_type": v.GuestOS, "vm_tools_status": v.Tools, "in_recycle_bin": false,
	}
}

func (s *Server) diskWire(d *vmDisk) map[string]any {
	m := map[string]any{
		"id": d.ID, "type": d.Type, "bus": d.Bus, "boot": d.Boot, "index": d.Index,
		"vm": ref(d.VMID), "vm_volume": nil,
	}
	if d.VolumeID != "" {
		m["vm_volume"] = ref(d.VolumeID)
	}
	return m
}

func (s *Server) mountedBy(volID string) string {
	for _, d := range s.disks {
		if d.VolumeID == volID {
			return d.VMID
		}
	}
	return ""
}

func (s *Server) volumeWire(v *volume) map[string]any {
	return map[string]any{
		"id": v.ID, "local_id": v.LocalID, "name": v.Name, "size": v.data.size,
		"elf_storage_policy": v.Policy, "path": "/usr/share/smartx/volumes/" + v.LocalID,
		"sharing": false, "mounting": s.mountedBy(v.ID) != "", "cluster": ref(v.ClusterID),
	}
}

func (s *Server) nicWire(n *vmNIC) map[string]any {
	m := map[string]any{
		"id": n.ID, "local_id": n.LocalID, "mac_address": n.MAC, "model": n.Model,
		"enabled": n.Enabled, "vm": ref(n.VMID), "vlan": nil,
	}
	if vl := s.vlans[n.VLAN]; vl != nil {
		m["vlan"] = map[string]any{"id": vl.ID, "vlan_id": vl.VLANID, "name": vl.Name}
	}
	return m
}

func (s *Server) snapshotWire(sn *snapshot) map[string]any {
	disks := []map[string]any{}
	for _, d := range sn.Disks {
		disks = append(disks, map[string]any{
			"type": d.Type, "bus": d.Bus, "boot": d.Boot, "index": d.Index, "size": d.Size,
			"vm_volume_local_id": d.VolumeLocalID, "snapshot_local_id": d.SnapshotLocalID,
		})
	}
	return map[string]any{
		"id": sn.ID, "local_id": sn.LocalID, "name": sn.Name, "vm": ref(sn.VMID),
		"consistent_type": sn.Consistent, "vcpu": sn.VCPU, "memory": sn.Memory,
		"firmware": sn.Firmware, "vm_nics": sn.NICs, "vm_disks": disks, "status": sn.Status,
	}
}

// settle finishes the tasks whose time has come, applying their effects.
func (s *Server) settle() {
	for _, id := range sortedKeys(s.tasks) {
		s.advance(s.tasks[id])
	}
}

func (s *Server) advance(t *task) {
	if t.finished {
		return
	}
	if t.hang {
		t.status, t.progress = "EXECUTING", 0.5
		return
	}
	d := s.opts.TaskDuration
	el := s.opts.Now().Sub(t.start)
	switch {
	case el < d/4:
		t.status, t.progress = "PENDING", 0
	case el < d:
		t.status, t.progress = "EXECUTING", float64(el)/float64(d)
	default:
		t.finished = true
		failed := t.fail != ""
		if t.done != nil {
			t.done(failed)
		}
		if failed {
			t.status, t.progress = "FAILED", float64(el)/float64(d)/2
		} else {
			t.status, t.progress = "SUCCESSED", 1
		}
	}
}

func (s *Server) taskWire(t *task) map[string]any {
	s.advance(t)
	m := map[string]any{"id": t.ID, "status": t.status, "progress": t.progress, "description": t.Op,
		"error_code": nil, "error_message": nil}
	if t.status == "FAILED" {
		m["error_code"] = t.fail
		m["error_message"] = "injected failure of " + t.Op
		if t.failDetail != "" {
			m["error_message"] = t.failDetail
		}
	}
	return m
}

// newTask starts a task for op; a fault can make it fail or hang.
func (s *Server) newTask(op string, f *Fault, done func(failed bool)) string {
	t := &task{ID: s.newID("task"), Op: op, start: s.opts.Now(), done: done, status: "PENDING"}
	if f != nil {
		t.fail = f.FailTask
		t.hang = f.HangTask
	}
	s.tasks[t.ID] = t
	return t.ID
}

// VMSpec seeds a VM with AddVM. Zero fields get defaults.
type VMSpec struct {
	Name string
	// Status is RUNNING (default), STOPPED or SUSPENDED.
	Status string
	// VCPU (default 1) and Memory in bytes (default 1 GiB).
	VCPU   int
	Memory int64
	// Firmware is BIOS (default) or UEFI.
	Firmware string
	// ClusterID and HostID default to "cluster-1" and "host-1".
	ClusterID, HostID string
	// ToolsRunning says whether the guest tools run (needed for
	// FILE_SYSTEM_CONSISTENT snapshots).
	ToolsRunning bool
	Labels       map[string]string
	Disks        []DiskSpec
	NICs         []NICSpec
}

// DiskSpec is a disk of a seeded VM, backed by a new zero-filled volume
// (none for a CD-ROM).
type DiskSpec struct {
	Size  int64
	Bus   string // default VIRTIO
	Boot  int
	CDROM bool
}

// NICSpec is a NIC of a seeded VM. VLAN is a VLAN object id; it is created
// (with VLAN tag 0) if unknown.
type NICSpec struct {
	VLAN, MAC, Model string
	Disabled         bool
}

// VMInfo names what AddVM created.
type VMInfo struct {
	ID        string
	DiskIDs   []string // in the order of VMSpec.Disks
	VolumeIDs []string // "" for a CD-ROM
	NICIDs    []string
}

// ErrNotFound is returned by the seeding methods for unknown ids.
var ErrNotFound = errors.New("avetest: not found")

// AddVM seeds a VM.
func (s *Server) AddVM(spec VMSpec) (VMInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if spec.Name == "" {
		return VMInfo{}, fmt.Errorf("avetest: AddVM: empty name")
	}
	v := &vm{Name: spec.Name, Status: spec.Status, VCPU: spec.VCPU, Memory: spec.Memory,
		Firmware: spec.Firmware, ClusterID: spec.ClusterID, HostID: spec.HostID, GuestOS: "LINUX", Tools: "NOT_RUNNING"}
	if v.Status == "" {
		v.Status = "RUNNING"
	}
	if v.VCPU == 0 {
		v.VCPU = 1
	}
	v.Cores, v.Sockets = v.VCPU, 1
	if v.Memory == 0 {
		v.Memory = 1 << 30
	}
	if v.Firmware == "" {
		v.Firmware = "BIOS"
	}
	if v.ClusterID == "" {
		v.ClusterID = "cluster-1"
	}
	if v.HostID == "" {
		v.HostID = "host-1"
	}
	if spec.ToolsRunning {
		v.Tools = "RUNNING"
	}
	v.ID = s.newID("vm")
	v.LocalID = randomHex(8)
	info := VMInfo{ID: v.ID}
	for i, ds := range spec.Disks {
		if ds.Size < 0 || (!ds.CDROM && ds.Size%512 != 0) {
			return VMInfo{}, fmt.Errorf("avetest: AddVM: disk %d: size %d is not a multiple of 512", i, ds.Size)
		}
		d := &vmDisk{ID: s.newID("vmdisk"), VMID: v.ID, Type: "DISK", Bus: ds.Bus, Boot: ds.Boot, Index: i}
		if d.Bus == "" {
			d.Bus = "VIRTIO"
		}
		if ds.CDROM {
			d.Type = "CD_ROM"
		} else {
			vol := s.newVolume(fmt.Sprintf("%s-disk%d", v.Name, i), v.ClusterID, newSparse(ds.Size))
			d.VolumeID = vol.ID
		}
		s.disks[d.ID] = d
		v.Disks = append(v.Disks, d.ID)
		info.DiskIDs = append(info.DiskIDs, d.ID)
		info.VolumeIDs = append(info.VolumeIDs, d.VolumeID)
	}
	for _, ns := range spec.NICs {
		if ns.VLAN != "" && s.vlans[ns.VLAN] == nil {
			s.vlans[ns.VLAN] = &vlan{ID: ns.VLAN, Name: ns.VLAN}
		}
		n := &vmNIC{ID: s.newID("vmnic"), LocalID: randomHex(8), VMID: v.ID, MAC: ns.MAC, Model: ns.Model, VLAN: ns.VLAN, Enabled: !ns.Disabled}
		if n.Model == "" {
			n.Model = "VIRTIO"
		}
		if n.MAC == "" {
			n.MAC = s.newMAC()
		}
		s.nics[n.ID] = n
		v.NICs = append(v.NICs, n.ID)
		info.NICIDs = append(info.NICIDs, n.ID)
	}
	for _, k := range sortedKeys(spec.Labels) {
		s.addLabel(v.ID, k, spec.Labels[k])
	}
	s.vms[v.ID] = v
	return info, nil
}

func (s *Server) newMAC() string {
	s.seq++
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", (s.seq>>16)&0xff, (s.seq>>8)&0xff, s.seq&0xff)
}

func (s *Server) newVolume(name, cluster string, data *sparse) *volume {
	vol := &volume{ID: s.newID("vmvolume"), LocalID: randomHex(8), Name: name, Policy: "REPLICA_2_THIN_PROVISION", ClusterID: cluster, data: data}
	s.volumes[vol.ID] = vol
	return vol
}

func (s *Server) addLabel(vmID, key, value string) {
	for _, l := range s.labels {
		if l.Key == key && l.Value == value {
			l.VMs = append(l.VMs, vmID)
			return
		}
	}
	l := &label{ID: s.newID("label"), Key: key, Value: value, VMs: []string{vmID}}
	s.labels[l.ID] = l
}

// AddVLAN seeds a VLAN that NICs can connect to.
func (s *Server) AddVLAN(id string, tag int, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vlans[id] = &vlan{ID: id, VLANID: tag, Name: name}
}

// RemoveVM deletes a VM, its disks, NICs and volumes.
func (s *Server) RemoveVM(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeVM(id, true)
}

func (s *Server) removeVM(id string, volumes bool) {
	v := s.vms[id]
	if v == nil {
		return
	}
	for _, d := range v.Disks {
		if volumes && s.disks[d] != nil {
			delete(s.volumes, s.disks[d].VolumeID)
		}
		delete(s.disks, d)
	}
	for _, n := range v.NICs {
		delete(s.nics, n)
	}
	for _, l := range s.labels {
		for i, x := range l.VMs {
			if x == id {
				l.VMs = append(l.VMs[:i:i], l.VMs[i+1:]...)
				break
			}
		}
	}
	delete(s.vms, id)
}

func (s *Server) diskVolume(vmID, diskID string) (*volume, error) {
	v := s.vms[vmID]
	if v == nil {
		return nil, fmt.Errorf("vm %q: %w", vmID, ErrNotFound)
	}
	d := s.disks[diskID]
	if d == nil || d.VMID != vmID || s.volumes[d.VolumeID] == nil {
		return nil, fmt.Errorf("disk %q of vm %q: %w", diskID, vmID, ErrNotFound)
	}
	return s.volumes[d.VolumeID], nil
}

// GuestWrite writes p at off to a disk's current volume, as the guest.
func (s *Server) GuestWrite(vmID, diskID string, off int64, p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vol, err := s.diskVolume(vmID, diskID)
	if err != nil {
		return fmt.Errorf("avetest: guest write: %w", err)
	}
	if off < 0 || off+int64(len(p)) > vol.data.size {
		return fmt.Errorf("avetest: guest write of %d bytes at %d: outside the disk's %d bytes", len(p), off, vol.data.size)
	}
	vol.data.writeAt(p, off)
	return nil
}

// ReadDisk returns the whole content of a disk's current volume.
func (s *Server) ReadDisk(vmID, diskID string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vol, err := s.diskVolume(vmID, diskID)
	if err != nil {
		return nil, fmt.Errorf("avetest: read disk: %w", err)
	}
	p := make([]byte, vol.data.size)
	vol.data.readAt(p, 0)
	return p, nil
}

// SetToolsRunning sets whether a VM's guest tools run.
func (s *Server) SetToolsRunning(vmID string, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vms[vmID]
	if v == nil {
		return fmt.Errorf("avetest: vm %q: %w", vmID, ErrNotFound)
	}
	v.Tools = "NOT_RUNNING"
	if on {
		v.Tools = "RUNNING"
	}
	return nil
}

// Counts is what the server holds, for tests that check nothing was left
// behind.
type Counts struct {
	VMs, Volumes, Snapshots, ExportFiles, Uploads, Tasks int
	// PendingTasks are tasks not finished yet.
	PendingTasks int
}

// Counts returns how many objects of each kind the server holds.
func (s *Server) Counts() Counts {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settle()
	c := Counts{VMs: len(s.vms), Volumes: len(s.volumes), Snapshots: len(s.snapshots),
		ExportFiles: len(s.exports), Uploads: len(s.uploads), Tasks: len(s.tasks)}
	for _, t := range s.tasks {
		if !t.finished {
			c.PendingTasks++
		}
	}
	return c
}

// Snapshots returns how many VM snapshots the server holds.
func (s *Server) Snapshots() int { return s.Counts().Snapshots }

// VMStatus returns a VM's status (RUNNING, STOPPED, ...).
func (s *Server) VMStatus(vmID string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.settle()
	v := s.vms[vmID]
	if v == nil {
		return "", fmt.Errorf("avetest: vm %q: %w", vmID, ErrNotFound)
	}
	return v.Status, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// SetVMStatus sets a VM's status directly (RUNNING, STOPPED, SUSPENDED), as
// an administrator acting behind the backend's back would.
func (s *Server) SetVMStatus(vmID, status string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vms[vmID]
	if v == nil {
		return fmt.Errorf("avetest: vm %q: %w", vmID, ErrNotFound)
	}
	v.Status = status
	return nil
}
