package fake

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Shutdown implements hypervisor.PowerController. With
// Options.IgnoreShutdown, a running VM stays running and Shutdown returns
// when ctx ends, with its error.
func (h *Hypervisor) Shutdown(ctx context.Context, vmID string) error {
	if err := h.begin(ctx, OpPower, vmID, ""); err != nil {
		return err
	}
	h.mu.Lock()
	v, _, err := h.lookup("shutdown", vmID, "")
	if err == nil && v.desc.Power == hypervisor.PowerRunning && h.opts.IgnoreShutdown {
		h.mu.Unlock()
		<-ctx.Done()
		return fmt.Errorf("fake: shutdown vm %q: the guest ignores the request: %w", vmID, ctx.Err())
	}
	defer h.mu.Unlock()
	if err != nil {
		return err
	}
	v.desc.Power = hypervisor.PowerStopped
	return nil
}

// PowerOff implements hypervisor.PowerController.
func (h *Hypervisor) PowerOff(ctx context.Context, vmID string) error {
	return h.setPower(ctx, "power off", vmID, hypervisor.PowerStopped)
}

// Start implements hypervisor.PowerController. It gives ErrConflict while a
// disk of the VM is open for writing.
func (h *Hypervisor) Start(ctx context.Context, vmID string) error {
	return h.setPower(ctx, "start", vmID, hypervisor.PowerRunning)
}

// Suspend pauses a VM (PowerSuspended), as a backend may report it. It is
// not part of the contract and is never faulted.
func (h *Hypervisor) Suspend(ctx context.Context, vmID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake: suspend: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v, _, err := h.lookup("suspend", vmID, "")
	if err != nil {
		return err
	}
	if v.desc.Power != hypervisor.PowerRunning {
		return fmt.Errorf("fake: suspend vm %q: it is %s: %w", vmID, v.desc.Power, hypervisor.ErrConflict)
	}
	v.desc.Power = hypervisor.PowerSuspended
	return nil
}

func (h *Hypervisor) setPower(ctx context.Context, op, vmID string, to hypervisor.PowerState) error {
	if err := h.begin(ctx, OpPower, vmID, ""); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v, _, err := h.lookup(op, vmID, "")
	if err != nil {
		return err
	}
	if to == hypervisor.PowerRunning && v.writers > 0 && v.desc.Power != hypervisor.PowerRunning {
		return fmt.Errorf("fake: %s vm %q: %d disk(s) open for writing: %w", op, vmID, v.writers, hypervisor.ErrConflict)
	}
	v.desc.Power = to
	return nil
}

// OpenDiskForWrite implements hypervisor.DiskWriter. The VM must be stopped
// (else ErrConflict), and a disk can be open for writing only once at a
// time (else ErrConflict). Writes are visible at once (to ReadDisk, to new
// snapshots and to change tracking), so Flush only checks that the disk is
// still open. The returned disk implements ChangeReporter unless
// Options.NoChangeTracking is set, and ExtentReporter (the disk's current
// allocation, so a restore need not read what holds nothing) unless
// Options.NoExtents is set.
func (h *Hypervisor) OpenDiskForWrite(ctx context.Context, vmID, diskID string) (hypervisor.WritableDisk, error) {
	if err := h.begin(ctx, OpOpenDiskForWrite, vmID, diskID); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v, d, err := h.lookup("open disk for write", vmID, diskID)
	if err != nil {
		return nil, err
	}
	if v.desc.Power != hypervisor.PowerStopped {
		return nil, fmt.Errorf("fake: open disk %q of vm %q for write: the vm is %s: %w", diskID, vmID, v.desc.Power, hypervisor.ErrConflict)
	}
	if d.writer {
		return nil, fmt.Errorf("fake: open disk %q of vm %q for write: already open for writing: %w", diskID, vmID, hypervisor.ErrConflict)
	}
	d.writer = true
	v.writers++
	w := &writableDisk{h: h, v: v, d: d, vmID: vmID}
	switch o := h.opts; {
	case o.NoExtents && o.NoChangeTracking:
		return w, nil
	case o.NoChangeTracking:
		return extWritableDisk{w}, nil
	case o.NoExtents:
		return cbtWritableDisk{w}, nil
	default:
		return extCBTWritableDisk{w}, nil
	}
}

// writableDisk is a disk opened for writing.
type writableDisk struct {
	h    *Hypervisor
	v    *vm
	d    *disk
	vmID string

	mu     sync.RWMutex // Close excludes the other methods
	closed bool
}

// The types below add the optional interfaces the Options ask for.
type (
	extWritableDisk    struct{ *writableDisk }
	cbtWritableDisk    struct{ *writableDisk }
	extCBTWritableDisk struct{ *writableDisk }
)

var (
	_ hypervisor.ExtentReporter = extWritableDisk{}
	_ hypervisor.ChangeReporter = cbtWritableDisk{}
	_ hypervisor.ExtentReporter = extCBTWritableDisk{}
	_ hypervisor.ChangeReporter = extCBTWritableDisk{}
)

func (w extWritableDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return w.allocatedExtents(ctx)
}

func (w cbtWritableDisk) ChangedExtents(ctx context.Context, tok string) ([]hypervisor.Extent, error) {
	return w.changedExtents(ctx, tok)
}

func (w extCBTWritableDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return w.allocatedExtents(ctx)
}

func (w extCBTWritableDisk) ChangedExtents(ctx context.Context, tok string) ([]hypervisor.Extent, error) {
	return w.changedExtents(ctx, tok)
}

func (w *writableDisk) Size() int64 { return w.d.size }

func (w *writableDisk) ReadAt(p []byte, off int64) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return 0, fmt.Errorf("fake: read disk %q of vm %q: %w", w.d.id, w.vmID, errClosed)
	}
	return readAtSize(p, off, w.d.size, w.d.read)
}

// WriteAt writes all of p or nothing: a write that does not lie within the
// disk fails without writing.
func (w *writableDisk) WriteAt(p []byte, off int64) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return 0, fmt.Errorf("fake: write disk %q of vm %q: %w", w.d.id, w.vmID, errClosed)
	}
	if err := w.h.hit(context.Background(), OpWrite, w.vmID, w.d.id); err != nil {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > w.d.size {
		return 0, fmt.Errorf("fake: write disk %q of vm %q: %d bytes at %d outside the disk's %d bytes", w.d.id, w.vmID, len(p), off, w.d.size)
	}
	if err := w.d.write(p, off, w.h.opts.Granularity); err != nil {
		return 0, fmt.Errorf("fake: write disk %q of vm %q: %w", w.d.id, w.vmID, err)
	}
	w.h.stats.writes.Add(1)
	w.h.stats.bytesWritten.Add(int64(len(p)))
	return len(p), nil
}

func (w *writableDisk) Flush(ctx context.Context) error {
	if err := w.h.begin(ctx, OpFlush, w.vmID, w.d.id); err != nil {
		return err
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return fmt.Errorf("fake: flush disk %q of vm %q: %w", w.d.id, w.vmID, errClosed)
	}
	return nil
}

// Close releases the disk. A fault on OpFlush makes Close fail, and the
// disk is released all the same. Closing again returns nil.
func (w *writableDisk) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	w.h.mu.Lock()
	w.d.writer = false
	w.v.writers--
	w.h.mu.Unlock()
	return w.h.hit(context.Background(), OpFlush, w.vmID, w.d.id)
}

// allocatedExtents reports where the disk's current content, including
// the writes made through this WritableDisk, may be non-zero: the blocks
// held in memory, or the file's data ranges (SEEK_DATA/SEEK_HOLE).
func (w *writableDisk) allocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	if err := w.h.begin(ctx, OpAllocatedExtents, w.vmID, w.d.id); err != nil {
		return nil, err
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return nil, fmt.Errorf("fake: allocated extents of disk %q of vm %q: %w", w.d.id, w.vmID, errClosed)
	}
	ext, err := w.d.extents()
	if err != nil {
		return nil, fmt.Errorf("fake: allocated extents of disk %q of vm %q: %w", w.d.id, w.vmID, err)
	}
	return ext, nil
}

// changedExtents reports what changed on the disk since the snapshot that
// issued token, including writes through this WritableDisk.
func (w *writableDisk) changedExtents(ctx context.Context, tok string) ([]hypervisor.Extent, error) {
	if err := w.h.begin(ctx, OpChangedExtents, w.vmID, w.d.id); err != nil {
		return nil, err
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return nil, fmt.Errorf("fake: changed extents of disk %q of vm %q: %w", w.d.id, w.vmID, errClosed)
	}
	t, err := w.h.decodeToken(tok, w.vmID, w.d.id)
	if err != nil {
		return nil, fmt.Errorf("fake: changed extents of disk %q of vm %q: %w: %w", w.d.id, w.vmID, hypervisor.ErrTokenInvalid, err)
	}
	d := w.d
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.dirty == nil || t.Epoch != d.epoch {
		return nil, fmt.Errorf("fake: changed extents of disk %q of vm %q: %w: change tracking was reset or turned off since the token was issued", d.id, w.vmID, hypervisor.ErrTokenInvalid)
	}
	return changed(d.dirty, t.Gen, w.h.opts.Granularity, d.size), nil
}

// CreateVM implements hypervisor.Creator. The new VM is stopped, gets ids
// "vm-N", "disk-1"..., "nic-1"..., keeps the spec's disk names, buses and
// boot order, NIC models, networks, MACs (a missing MAC is made up) and
// Connected flags, and stores spec.Raw as its Raw. A name already used by
// another VM gives ErrConflict; an empty name or a disk size that is not
// positive is an error.
func (h *Hypervisor) CreateVM(ctx context.Context, spec hypervisor.CreateSpec) (hypervisor.VM, error) {
	if err := h.begin(ctx, OpCreate, "", ""); err != nil {
		return hypervisor.VM{}, err
	}
	if spec.Name == "" {
		return hypervisor.VM{}, fmt.Errorf("fake: create vm: empty name")
	}
	desc := hypervisor.VM{
		Name:      spec.Name,
		CPUs:      spec.CPUs,
		MemoryB:   spec.MemoryB,
		Firmware:  spec.Firmware,
		Power:     hypervisor.PowerStopped,
		Placement: spec.Placement,
		Raw:       slices.Clone(spec.Raw),
	}
	var stores []store
	for i, d := range spec.Disks {
		if d.Size <= 0 {
			return hypervisor.VM{}, fmt.Errorf("fake: create vm %q: disk %d: size %d is not positive", spec.Name, i, d.Size)
		}
		d.ID = "disk-" + strconv.Itoa(i+1)
		desc.Disks = append(desc.Disks, d)
		stores = append(stores, newMemStore(d.Size))
	}
	desc.NICs = slices.Clone(spec.NICs)
	for i := range desc.NICs {
		desc.NICs[i].ID = ""
	}
	return h.add(desc, stores, true)
}
