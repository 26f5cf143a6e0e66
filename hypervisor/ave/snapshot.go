package ave

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// DiskSource names one disk of a snapshot for a DataPath.
type DiskSource struct {
	VMID   string
	DiskID string // the VM disk's id (hypervisor.DiskInfo.ID)
	// SnapshotID is the VM snapshot's id; SnapshotLocalID the disk's
	// snapshot_local_id in it (the ABS snapshot of the volume).
	SnapshotID, SnapshotLocalID string
	// VolumeID and VolumeLocalID name the volume the disk had when the
	// snapshot was taken.
	VolumeID, VolumeLocalID string
	Size                    int64
}

// DataPath reads the disks of AOC snapshots. The default, ExportDataPath,
// exports the snapshot's volume and downloads it over HTTP; it knows no
// changed blocks, so the engine does hash-based incrementals (it reads
// every block and stores only the chunks the repository lacks).
//
// An embedder with a faster or smarter path (reading ABS directly, iSCSI
// through clone-iscsi-lun-from-snapshot) plugs it in through
// Options.DataPath. If the hypervisor.Disk it returns implements
// hypervisor.ChangeTracker (or ExtentReporter), the engine uses it and
// reads only changed (or allocated) ranges. The Disk is closed before its
// snapshot is deleted; it must not outlive the snapshot.
type DataPath interface {
	OpenSnapshotDisk(ctx context.Context, h *Hypervisor, src DiskSource) (hypervisor.Disk, error)
}

// consistentType maps a consistency level onto AOC's consistent_type.
func consistentType(c hypervisor.Consistency) (string, error) {
	switch c {
	case "", hypervisor.CrashConsistent:
		return "CRASH_CONSISTENT", nil
	case hypervisor.ApplicationConsistent:
		return "FILE_SYSTEM_CONSISTENT", nil
	}
	return "", fmt.Errorf("consistency %q: %w", c, hypervisor.ErrUnsupported)
}

// snapshotWire is a get-vm-snapshots element.
type snapshotWire struct {
	ID      string `json:"id"`
	VMDisks []struct {
		Type            string `json:"type"`
		Size            int64  `json:"size"`
		VolumeLocalID   string `json:"vm_volume_local_id"`
		SnapshotLocalID string `json:"snapshot_local_id"`
	} `json:"vm_disks"`
}

// Snapshot takes a VM snapshot with create-vm-snapshot and waits for its
// task. Application consistency is AOC's FILE_SYSTEM_CONSISTENT, which needs
// a running VM with running guest tools; without them it falls back to
// CRASH_CONSISTENT with a Note if opts.AllowCrashFallback, else it fails with
// hypervisor.ErrUnsupported. Whatever fails after AOC accepted the snapshot
// deletes it before returning.
func (h *Hypervisor) Snapshot(ctx context.Context, vmID string, opts hypervisor.SnapshotOptions) (hypervisor.Snapshot, error) {
	ct, err := consistentType(opts.Consistency)
	if err != nil {
		return nil, fmt.Errorf("ave: snapshot vm %s: %w", vmID, err)
	}
	st, err := h.loadVM(ctx, vmID)
	if err != nil {
		return nil, fmt.Errorf("ave: snapshot: %w", err)
	}
	info := hypervisor.SnapshotInfo{Consistency: hypervisor.CrashConsistent}
	if ct == "FILE_SYSTEM_CONSISTENT" {
		info.Consistency = hypervisor.ApplicationConsistent
		var why string
		switch {
		case st.wire.Status != "RUNNING":
			why = fmt.Sprintf("vm is %s, not RUNNING", st.wire.Status)
		case st.wire.Tools != "RUNNING":
			why = fmt.Sprintf("guest tools are %s", st.wire.Tools)
		}
		if why != "" {
			if !opts.AllowCrashFallback {
				return nil, fmt.Errorf("ave: snapshot vm %s: file-system consistency impossible (%s): %w", vmID, why, hypervisor.ErrUnsupported)
			}
			ct, info.Consistency = "CRASH_CONSISTENT", hypervisor.CrashConsistent
			info.Note = "crash-consistent instead of file-system-consistent: " + why
		}
	}
	name := opts.Name
	if name == "" {
		name = fmt.Sprintf("vmbackup-%s", time.Now().UTC().Format("20060102T150405.000Z"))
	}
	in := map[string]any{"data": []map[string]any{{"vm_id": vmID, "name": name, "consistent_type": ct}}}
	var ans []mutationAnswer
	if err := h.c.call(ctx, "create-vm-snapshot", in, &ans); err != nil {
		var ae *APIError
		if ct == "FILE_SYSTEM_CONSISTENT" && opts.AllowCrashFallback && errors.As(err, &ae) && strings.Contains(ae.Code, "TOOLS") {
			opts.Consistency = hypervisor.CrashConsistent
			s, err2 := h.Snapshot(ctx, vmID, opts)
			if err2 == nil {
				sn := s.(*snapshot)
				sn.info.Note = "crash-consistent instead of file-system-consistent: " + ae.Message
			}
			return s, err2
		}
		return nil, fmt.Errorf("ave: snapshot vm %s: %w", vmID, err)
	}
	if len(ans) != 1 {
		return nil, fmt.Errorf("ave: snapshot vm %s: create-vm-snapshot answered %d items: %w", vmID, len(ans), ErrBadResponse)
	}
	var created struct {
		ID string `json:"id"`
	}
	if err := jsonData(ans[0].Data, &created); err != nil || created.ID == "" {
		return nil, fmt.Errorf("ave: snapshot vm %s: create-vm-snapshot answer has no snapshot id: %w", vmID, ErrBadResponse)
	}
	s := &snapshot{h: h, id: created.ID, sources: map[string]DiskSource{}}
	fail := func(err error) (hypervisor.Snapshot, error) {
		if rerr := s.Release(ctx); rerr != nil {
			return nil, fmt.Errorf("ave: snapshot vm %s: %w (and deleting the snapshot failed: %v)", vmID, err, rerr)
		}
		return nil, fmt.Errorf("ave: snapshot vm %s: %w", vmID, err)
	}
	if err := h.waitTask(ctx, "create-vm-snapshot", ans[0].TaskID); err != nil {
		return fail(err)
	}
	var snaps []snapshotWire
	if err := h.c.call(ctx, "get-vm-snapshots", map[string]any{"where": map[string]any{"id": created.ID}}, &snaps); err != nil {
		return fail(err)
	}
	if len(snaps) != 1 {
		return fail(fmt.Errorf("get-vm-snapshots does not show snapshot %s: %w", created.ID, ErrBadResponse))
	}
	byLocal := map[string]int{}
	for i, d := range snaps[0].VMDisks {
		if d.VolumeLocalID != "" {
			byLocal[d.VolumeLocalID] = i
		}
	}
	vm := st.vm
	vm.Disks = nil
	for _, d := range st.vm.Disks {
		vol := st.volumes[d.ID]
		i, ok := byLocal[vol.LocalID]
		if !ok {
			return fail(fmt.Errorf("snapshot %s lacks disk %s (volume %s): %w", created.ID, d.ID, vol.ID, ErrBadResponse))
		}
		sd := snaps[0].VMDisks[i]
		d.Size = sd.Size
		vm.Disks = append(vm.Disks, d)
		s.sources[d.ID] = DiskSource{VMID: vmID, DiskID: d.ID, SnapshotID: created.ID, SnapshotLocalID: sd.SnapshotLocalID,
			VolumeID: vol.ID, VolumeLocalID: vol.LocalID, Size: sd.Size}
	}
	info.ID, info.VM = created.ID, vm
	s.info = info
	h.log.Debug("ave: snapshot taken", "vm", vmID, "snapshot", created.ID, "consistency", info.Consistency)
	return s, nil
}

type snapshot struct {
	h       *Hypervisor
	id      string
	info    hypervisor.SnapshotInfo
	sources map[string]DiskSource

	mu       sync.Mutex
	released bool
	open     []hypervisor.Disk
}

func (s *snapshot) Info() hypervisor.SnapshotInfo { return s.info }

// OpenDisk opens a disk of the snapshot through the DataPath.
func (s *snapshot) OpenDisk(ctx context.Context, diskID string) (hypervisor.Disk, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ave: open disk %s of snapshot %s: %w", diskID, s.id, err)
	}
	src, ok := s.sources[diskID]
	if !ok {
		return nil, fmt.Errorf("ave: open disk %s of snapshot %s: %w", diskID, s.id, hypervisor.ErrNotFound)
	}
	s.mu.Lock()
	released := s.released
	s.mu.Unlock()
	if released {
		return nil, fmt.Errorf("ave: open disk %s: snapshot %s is released", diskID, s.id)
	}
	d, err := s.h.dp.OpenSnapshotDisk(ctx, s.h, src)
	if err != nil {
		return nil, fmt.Errorf("ave: open disk %s of snapshot %s: %w", diskID, s.id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released {
		d.Close()
		return nil, fmt.Errorf("ave: open disk %s: snapshot %s is released", diskID, s.id)
	}
	s.open = append(s.open, d)
	return d, nil
}

// Release closes the disks still open and deletes the snapshot, even if
// ctx is cancelled (it then uses its own timeout).
func (s *snapshot) Release(ctx context.Context) error {
	s.mu.Lock()
	if s.released {
		s.mu.Unlock()
		return nil
	}
	s.released = true
	open := s.open
	s.open = nil
	s.mu.Unlock()
	for _, d := range open {
		d.Close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.h.opts.RequestTimeout+s.h.opts.TaskTimeout)
	defer cancel()
	if _, err := s.h.mutate(ctx, "delete-vm-snapshot", map[string]any{"where": map[string]any{"id": s.id}}); err != nil {
		return fmt.Errorf("ave: release snapshot %s: %w", s.id, err)
	}
	s.h.log.Debug("ave: snapshot deleted", "snapshot", s.id)
	return nil
}
