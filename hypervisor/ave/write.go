package ave

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime/multipart"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// power runs op unless the VM is already in want.
func (h *Hypervisor) power(ctx context.Context, what, vmID, op string, want hypervisor.PowerState) error {
	st, err := h.loadVM(ctx, vmID)
	if err != nil {
		return fmt.Errorf("ave: %s: %w", what, err)
	}
	if st.vm.Power == want {
		return nil
	}
	if op == "start-vm" {
		h.mu.Lock()
		for _, v := range st.volumes {
			delete(h.fresh, v.ID) // the guest may write it from now on
		}
		for d, vm := range h.writing {
			if vm == vmID {
				h.mu.Unlock()
				return fmt.Errorf("ave: start vm %s: disk %s is open for writing: %w", vmID, d, hypervisor.ErrConflict)
			}
		}
		h.mu.Unlock()
	}
	if _, err := h.mutate(ctx, op, map[string]any{"where": map[string]any{"id": vmID}}); err != nil {
		return fmt.Errorf("ave: %s vm %s: %w", what, vmID, err)
	}
	return nil
}

// Shutdown asks the guest to shut down (shutdown-vm) and waits for the task.
func (h *Hypervisor) Shutdown(ctx context.Context, vmID string) error {
	return h.power(ctx, "shutdown", vmID, "shutdown-vm", hypervisor.PowerStopped)
}

// PowerOff cuts the power (poweroff-vm) and waits for the task.
func (h *Hypervisor) PowerOff(ctx context.Context, vmID string) error {
	return h.power(ctx, "power off", vmID, "poweroff-vm", hypervisor.PowerStopped)
}

// Start powers the VM on (start-vm) and waits for the task. It gives
// hypervisor.ErrConflict while a disk of the VM is open for writing.
func (h *Hypervisor) Start(ctx context.Context, vmID string) error {
	return h.power(ctx, "start", vmID, "start-vm", hypervisor.PowerRunning)
}

// OpenDiskForWrite opens a stopped VM's disk for a restore in place. Writes
// go to a local sparse staging file that first receives the disk's current
// content (exported and downloaded like a snapshot disk, except for volumes
// this backend created zero-filled). Flush and Close upload the staged
// volume (upload-elf-file, chunked), import it as a new volume
// (import-vm-volume) and swap it into the disk's slot (update-vm-disk). The
// old volume stays until the swap succeeded; it is then deleted only if
// Options.DeleteReplacedVolumes (volumes made by an earlier Flush of the same
// WritableDisk are always deleted). A failed upload, import or swap deletes
// what it created and leaves the disk as it was.
func (h *Hypervisor) OpenDiskForWrite(ctx context.Context, vmID, diskID string) (hypervisor.WritableDisk, error) {
	st, err := h.loadVM(ctx, vmID)
	if err != nil {
		return nil, fmt.Errorf("ave: open disk for write: %w", err)
	}
	if st.vm.Power != hypervisor.PowerStopped {
		return nil, fmt.Errorf("ave: open disk %s of vm %s for write: vm is %s, power it off first: %w", diskID, vmID, st.vm.Power, hypervisor.ErrConflict)
	}
	vol, ok := st.volumes[diskID]
	if !ok {
		return nil, fmt.Errorf("ave: open disk %s of vm %s for write: %w", diskID, vmID, hypervisor.ErrNotFound)
	}
	h.mu.Lock()
	if _, busy := h.writing[diskID]; busy {
		h.mu.Unlock()
		return nil, fmt.Errorf("ave: open disk %s of vm %s for write: already open: %w", diskID, vmID, hypervisor.ErrConflict)
	}
	h.writing[diskID] = vmID
	// A volume CreateVM made is known to be zeros only until its VM
	// first runs; the mark is used once, by the rebuild that follows.
	fresh := h.fresh[vol.ID]
	delete(h.fresh, vol.ID)
	h.mu.Unlock()
	release := func() {
		h.mu.Lock()
		delete(h.writing, diskID)
		h.mu.Unlock()
	}
	var stg *staging
	if fresh {
		stg, err = h.newStaging(vol.Size)
		if err == nil {
			stg.filled()
		}
	} else {
		stg, err = h.startExport(ctx, map[string]any{"vm_volume_id": vol.ID, "type": "RAW"}, vol.Size)
	}
	if err != nil {
		release()
		return nil, fmt.Errorf("ave: open disk %s of vm %s for write: %w", diskID, vmID, err)
	}
	cluster := st.vm.Placement.Cluster
	if vol.Cluster != nil && vol.Cluster.ID != "" {
		cluster = vol.Cluster.ID
	}
	return &writableDisk{h: h, st: stg, vmID: vmID, diskID: diskID, vol: vol, cluster: cluster, release: release}, nil
}

type writableDisk struct {
	h       *Hypervisor
	st      *staging
	vmID    string
	diskID  string
	cluster string
	release func()

	mu      sync.Mutex // serialises Flush and Close
	vol     volumeWire // the disk's current volume
	ours    bool       // vol was made by an earlier Flush
	dirty   bool
	dirtyMu sync.Mutex
	closed  bool
}

func (w *writableDisk) Size() int64 { return w.st.size }

func (w *writableDisk) ReadAt(p []byte, off int64) (int, error) { return w.st.readAt(p, off) }

// WriteAt writes to the staging file once the download has passed the
// range. A range not within [0, Size) fails without writing.
func (w *writableDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > w.st.size {
		return 0, fmt.Errorf("ave: WriteAt of %d bytes at %d: outside the disk's %d bytes", len(p), off, w.st.size)
	}
	if err := w.st.wait(off + int64(len(p))); err != nil {
		return 0, err
	}
	w.st.fileMu.RLock()
	defer w.st.fileMu.RUnlock()
	if w.st.f == nil {
		return 0, errClosed
	}
	n, err := w.st.f.WriteAt(p, off)
	if n > 0 {
		w.dirtyMu.Lock()
		w.dirty = true
		w.dirtyMu.Unlock()
	}
	if err != nil {
		return n, fmt.Errorf("ave: write staging file: %w", err)
	}
	return n, nil
}

// Flush uploads the staged content and swaps it into the disk, if anything
// was written since the last Flush.
func (w *writableDisk) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ave: flush disk %s: %w", w.diskID, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errClosed
	}
	return w.flush(ctx)
}

func (w *writableDisk) flush(ctx context.Context) error {
	w.dirtyMu.Lock()
	dirty := w.dirty
	w.dirty = false
	w.dirtyMu.Unlock()
	if !dirty {
		return nil
	}
	err := w.swap(ctx)
	if err != nil {
		w.dirtyMu.Lock()
		w.dirty = true
		w.dirtyMu.Unlock()
		return fmt.Errorf("ave: flush disk %s of vm %s: %w", w.diskID, w.vmID, err)
	}
	return nil
}

// swap uploads, imports and swaps in the staged volume.
func (w *writableDisk) swap(ctx context.Context) error {
	h := w.h
	if err := w.st.waitCtx(ctx); err != nil {
		return err
	}
	name := fmt.Sprintf("%s-restored-%s", w.vol.Name, time.Now().UTC().Format("20060102T150405"))
	uploadID, err := w.upload(ctx, name)
	if err != nil {
		return err
	}
	policy := h.opts.StoragePolicy
	if policy == "" {
		policy = w.vol.Policy
	}
	in := map[string]any{"data": []map[string]any{{"cluster_id": w.cluster, "name": name, "upload_task_id": uploadID, "storage_policy": policy}}}
	ans, err := h.mutate(ctx, "import-vm-volume", in)
	var nv volumeWire
	if len(ans) == 1 {
		jsonData(ans[0].Data, &nv)
	}
	if err != nil {
		if nv.ID != "" {
			h.deleteVolume(nv.ID)
		}
		return err
	}
	if nv.ID == "" {
		return fmt.Errorf("import-vm-volume answer has no volume id: %w", ErrBadResponse)
	}
	nv.Size, nv.Name, nv.Policy = w.st.size, name, policy
	swap := map[string]any{"where": map[string]any{"id": w.vmID}, "data": map[string]any{"vm_disk_id": w.diskID, "vm_volume_id": nv.ID}}
	if _, err := h.mutate(ctx, "update-vm-disk", swap); err != nil {
		h.deleteVolume(nv.ID)
		return err
	}
	old, oldOurs := w.vol, w.ours
	w.vol, w.ours = nv, true
	h.log.Info("ave: restored volume swapped in", "vm", w.vmID, "disk", w.diskID, "new_volume", nv.ID, "old_volume", old.ID)
	if oldOurs || h.opts.DeleteReplacedVolumes {
		h.deleteVolume(old.ID)
	}
	return nil
}

func (h *Hypervisor) deleteVolume(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.RequestTimeout+h.opts.TaskTimeout)
	defer cancel()
	if _, err := h.mutate(ctx, "delete-vm-volume", map[string]any{"where": map[string]any{"id": id}}); err != nil {
		h.log.Warn("ave: could not delete volume", "volume", id, "err", err)
	}
}

// uploadAnswer is upload-elf-file's answer data.
type uploadAnswer struct {
	ID           string `json:"id"`
	ChunkSize    int64  `json:"chunk_size"`
	CurrentChunk int    `json:"current_chunk"`
}

func (w *writableDisk) uploadCall(ctx context.Context, fields map[string]string, chunk []byte) (uploadAnswer, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		mw.WriteField(k, fields[k])
	}
	if chunk != nil {
		fw, err := mw.CreateFormFile("file", fields["name"]+".raw")
		if err != nil {
			return uploadAnswer{}, err
		}
		fw.Write(chunk)
	}
	mw.Close()
	data := body.Bytes()
	var ans []mutationAnswer
	err := w.h.c.do(ctx, "upload-elf-file", mw.FormDataContentType(), func() io.Reader { return bytes.NewReader(data) }, &ans)
	if err != nil {
		return uploadAnswer{}, err
	}
	var u uploadAnswer
	if len(ans) != 1 || jsonData(ans[0].Data, &u) != nil || u.ID == "" {
		return uploadAnswer{}, fmt.Errorf("upload-elf-file: answer has no upload task: %w", ErrBadResponse)
	}
	return u, nil
}

// upload sends the staging file with upload-elf-file, chunk by chunk in
// order, and returns the upload task's id.
func (w *writableDisk) upload(ctx context.Context, name string) (string, error) {
	size := w.st.size
	u, err := w.uploadCall(ctx, map[string]string{"name": name, "size": strconv.FormatInt(size, 10)}, nil)
	if err != nil {
		return "", err
	}
	if u.ChunkSize <= 0 || u.ChunkSize > 256<<20 {
		return "", fmt.Errorf("upload-elf-file: chunk_size %d: %w", u.ChunkSize, ErrBadResponse)
	}
	buf := make([]byte, u.ChunkSize)
	for i := u.CurrentChunk; int64(i)*u.ChunkSize < size; i++ {
		off := int64(i) * u.ChunkSize
		p := buf[:min(u.ChunkSize, size-off)]
		w.st.fileMu.RLock()
		_, err := w.st.f.ReadAt(p, off)
		w.st.fileMu.RUnlock()
		if err != nil && err != io.EOF {
			return "", fmt.Errorf("read staging file: %w", err)
		}
		next, err := w.uploadCall(ctx, map[string]string{"name": name, "upload_task_id": u.ID, "chunk_index": strconv.Itoa(i)}, p)
		if err != nil {
			return "", fmt.Errorf("upload chunk %d: %w", i, err)
		}
		if next.CurrentChunk != i+1 {
			return "", fmt.Errorf("upload chunk %d: AOC expects chunk %d next: %w", i, next.CurrentChunk, ErrBadResponse)
		}
	}
	return u.ID, nil
}

// Close flushes (bounded by the backend's timeouts) and releases the disk.
func (w *writableDisk) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*(w.h.opts.RequestTimeout+w.h.opts.TaskTimeout))
	defer cancel()
	err := w.flush(ctx)
	w.closed = true
	w.st.close()
	w.release()
	return err
}

// CreateVM creates a stopped VM with create-vm: new zero-filled volumes
// (mount_new_create_disks) in the order of spec.Disks, and NICs in the order
// of spec.NICs, each connected to the VLAN whose id is NIC.Network and
// enabled only if Connected. The cluster is spec.Placement.Cluster, or the
// source VM's (from spec.Raw); the host is spec.Placement.Host if set.
// Mapping source VLANs onto target VLANs is the caller's: it sets
// NIC.Network. A name already taken gives hypervisor.ErrConflict.
func (h *Hypervisor) CreateVM(ctx context.Context, spec hypervisor.CreateSpec) (hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: %w", spec.Name, err)
	}
	cluster := spec.Placement.Cluster
	if cluster == "" && len(spec.Raw) > 0 {
		var raw vmWire
		if jsonData(spec.Raw, &raw) == nil && raw.Cluster != nil {
			cluster = raw.Cluster.ID
		}
	}
	if cluster == "" {
		return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: no Placement.Cluster and none in Raw", spec.Name)
	}
	vm := map[string]any{
		"cluster_id": cluster, "name": spec.Name, "vcpu": spec.CPUs, "cpu_cores": spec.CPUs, "cpu_sockets": 1,
		"memory": spec.MemoryB, "ha": false, "status": "STOPPED",
	}
	if spec.Placement.Host != "" {
		vm["host_id"] = spec.Placement.Host
	}
	if spec.Firmware != "" {
		vm["firmware"] = strings.ToUpper(spec.Firmware)
	}
	nics := []map[string]any{}
	for i, n := range spec.NICs {
		if n.Network == "" {
			return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: NIC %d: Network (a VLAN id) is empty; AOC needs one even for a disconnected NIC", spec.Name, i)
		}
		nic := map[string]any{"connect_vlan_id": n.Network, "enabled": n.Connected, "model": "VIRTIO"}
		if n.Model != "" {
			nic["model"] = strings.ToUpper(n.Model)
		}
		if n.MAC != "" {
			nic["mac_address"] = n.MAC
		}
		nics = append(nics, nic)
	}
	vm["vm_nics"] = nics
	disks := []map[string]any{}
	for i, d := range spec.Disks {
		name := d.Name
		if name == "" {
			name = fmt.Sprintf("disk%d", i)
		}
		v := map[string]any{"name": spec.Name + "-" + name, "size": d.Size}
		if h.opts.StoragePolicy != "" {
			v["elf_storage_policy"] = h.opts.StoragePolicy
		}
		bus := "VIRTIO"
		if d.Bus != "" {
			bus = strings.ToUpper(d.Bus)
		}
		disks = append(disks, map[string]any{"vm_volume": v, "bus": bus, "boot": d.BootOrder})
	}
	vm["vm_disks"] = map[string]any{"mount_disks": []any{}, "mount_new_create_disks": disks}
	ans, err := h.mutate(ctx, "create-vm", []any{vm})
	var created idRef
	if len(ans) == 1 {
		jsonData(ans[0].Data, &created)
	}
	if err != nil {
		if created.ID != "" && errors.Is(err, ErrTaskTimeout) {
			h.log.Warn("ave: create-vm task timed out; the VM may appear later", "vm", created.ID)
		}
		return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: %w", spec.Name, err)
	}
	if created.ID == "" {
		return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: answer has no VM id: %w", spec.Name, ErrBadResponse)
	}
	st, err := h.loadVM(ctx, created.ID)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("ave: create vm %q: %w", spec.Name, err)
	}
	h.mu.Lock()
	for _, v := range st.volumes {
		h.fresh[v.ID] = true
	}
	h.mu.Unlock()
	return st.vm, nil
}
