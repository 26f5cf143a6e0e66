package qemu

import (
	"context"
	"fmt"
	"sync"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/nbd"
)

// OpenDiskForWrite opens a stopped VM's disk for writing: a
// qemu-storage-daemon exports the disk's guest node writable over NBD, so
// the writes go through the dirty bitmap (the next incremental sees them)
// and around any held snapshot. A running VM gives ErrConflict, and so
// does a disk already open for writing.
func (h *Hypervisor) OpenDiskForWrite(ctx context.Context, vmID, diskID string) (hypervisor.WritableDisk, error) {
	v, err := h.lookup(vmID)
	if err != nil {
		return nil, err
	}
	i, ok := v.disk(diskID)
	if !ok {
		return nil, fmt.Errorf("qemu: VM %q: disk %q: %w", vmID, diskID, hypervisor.ErrNotFound)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: open disk %q for writing: %w", diskID, err)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return nil, fmt.Errorf("qemu: open disk %q for writing: %w", diskID, err)
	}
	defer v.mu.Unlock()
	if v.running() {
		return nil, fmt.Errorf("qemu: open disk %q of VM %q for writing: the VM runs: %w", diskID, vmID, hypervisor.ErrConflict)
	}
	if v.writers[diskID] {
		return nil, fmt.Errorf("qemu: open disk %q of VM %q for writing: already open: %w", diskID, vmID, hypervisor.ErrConflict)
	}
	p, err := v.acquireOffline(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu: open disk %q for writing: %w", diskID, err)
	}
	ds := p.disks[i]
	export := h.uniq("vmbw")
	fail := func(err error) (hypervisor.WritableDisk, error) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		p.delExport(cctx, export)
		cancel()
		v.releaseOffline()
		return nil, fmt.Errorf("qemu: open disk %q for writing: %w", diskID, err)
	}
	sock, err := p.nbdServer(ctx)
	if err != nil {
		return fail(err)
	}
	if err := p.addExport(ctx, export, ds.GuestNode, true, nil); err != nil {
		return fail(err)
	}
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: export, MetaContexts: []string{nbd.ContextAllocation}, Timeout: h.opts.IOTimeout})
	if err != nil {
		return fail(err)
	}
	v.writers[diskID] = true
	return &writable{v: v, p: p, ds: ds, export: export, c: c, size: v.sizes[i]}, nil
}

// writable is a stopped VM's disk open for writing.
type writable struct {
	v      *vm
	p      *proc
	ds     DiskSpec
	export string
	c      *nbd.Conn
	size   int64
	once   sync.Once
	err    error
}

func (w *writable) Size() int64 { return w.size }

func (w *writable) ReadAt(p []byte, off int64) (int, error) {
	n, err := w.c.ReadAt(p, off)
	if err != nil && err != io_EOF {
		return n, fmt.Errorf("qemu: read disk %q at %d: %w", w.ds.ID, off, err)
	}
	return n, err
}

func (w *writable) WriteAt(p []byte, off int64) (int, error) {
	n, err := w.c.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("qemu: write disk %q at %d: %w", w.ds.ID, off, err)
	}
	return n, nil
}

func (w *writable) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qemu: flush disk %q: %w", w.ds.ID, err)
	}
	if err := w.c.Flush(ctx); err != nil {
		return fmt.Errorf("qemu: flush disk %q: %w", w.ds.ID, err)
	}
	return nil
}

// AllocatedExtents reports the ranges of the disk as it is now that do not
// read as zeros, so a restore onto a new or sparse disk writes only the
// chunks that hold data and skips the rest.
func (w *writable) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return allocated(ctx, w.c, w.ds.ID, w.size)
}

// ChangedExtents reports what changed since token on the disk as it is now
// (the recording bitmap included, so the writes made here count).
func (w *writable) ChangedExtents(ctx context.Context, token string) ([]hypervisor.Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", w.ds.ID, err)
	}
	if parseBitmap(token).seq == 0 {
		return nil, fmt.Errorf("qemu: disk %q: token %q: %w", w.ds.ID, abbrev(token), hypervisor.ErrTokenInvalid)
	}
	if err := w.v.mu.LockContext(ctx); err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", w.ds.ID, err)
	}
	defer w.v.mu.Unlock()
	chain, err := w.v.chain(ctx, w.p, w.ds.Node)
	if err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", w.ds.ID, err)
	}
	var names []string
	for _, b := range chain {
		names = append(names, b.name)
	}
	i := indexOf(names, token)
	if i < 0 {
		return nil, fmt.Errorf("qemu: disk %q: token %q: %w", w.ds.ID, abbrev(token), hypervisor.ErrTokenInvalid)
	}
	return w.v.changed(ctx, w.p, w.ds, w.ds.Node, names[i:], w.size)
}

// Close flushes, deletes the export and lets the storage daemon go (it
// quits with the last holder, saving the bitmaps in the image).
func (w *writable) Close() error {
	w.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		ferr := w.c.Flush(ctx)
		w.c.Close()
		w.v.mu.Lock()
		defer w.v.mu.Unlock()
		derr := w.p.delExport(ctx, w.export)
		delete(w.v.writers, w.ds.ID)
		if w.p == w.v.offline {
			w.v.releaseOffline()
		}
		if ferr != nil {
			w.err = fmt.Errorf("qemu: close disk %q: %w", w.ds.ID, ferr)
		} else if derr != nil {
			w.err = fmt.Errorf("qemu: close disk %q: %w", w.ds.ID, derr)
		}
	})
	return w.err
}

// guestDisk is a writable NBD export of a running VM's guest node, through
// which GuestWrite plays the guest.
type guestDisk struct {
	export string
	c      *nbd.Conn
}

// GuestWrite writes p at off to a running VM's disk as its guest would:
// through the disk's guest node (above the copy-before-write filters of
// held snapshots), over a writable NBD export the backend keeps for it. It
// is meant for tests and demos; it needs a VM the backend started.
func (h *Hypervisor) GuestWrite(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	i, ok := v.disk(diskID)
	if !ok {
		return fmt.Errorf("qemu: VM %q: disk %q: %w", vmID, diskID, hypervisor.ErrNotFound)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return fmt.Errorf("qemu: guest write: %w", err)
	}
	g, err := v.guest(ctx, i)
	v.mu.Unlock()
	if err != nil {
		return fmt.Errorf("qemu: guest write to disk %q of VM %q: %w", diskID, vmID, err)
	}
	if _, err := g.c.WriteAtContext(ctx, p, off); err != nil {
		return fmt.Errorf("qemu: guest write to disk %q of VM %q: %w", diskID, vmID, err)
	}
	return g.c.Flush(ctx)
}

// guest returns the guest export of disk i, making it on first use. Call
// with mu held.
func (v *vm) guest(ctx context.Context, i int) (*guestDisk, error) {
	if !v.running() {
		return nil, fmt.Errorf("the VM is not running: %w", hypervisor.ErrConflict)
	}
	ds := v.run.disks[i]
	if ds.GuestNode == "" {
		return nil, fmt.Errorf("disk has no guest node: %w", hypervisor.ErrUnsupported)
	}
	if v.guests == nil {
		v.guests = map[string]*guestDisk{}
	}
	if g := v.guests[ds.ID]; g != nil {
		return g, nil
	}
	sock, err := v.run.nbdServer(ctx)
	if err != nil {
		return nil, err
	}
	export := v.h.uniq("vmbguest")
	if err := v.run.addExport(ctx, export, ds.GuestNode, true, nil); err != nil {
		return nil, err
	}
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: export})
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		v.run.delExport(cctx, export)
		cancel()
		return nil, err
	}
	g := &guestDisk{export: export, c: c}
	v.guests[ds.ID] = g
	return g, nil
}

// closeGuests closes the guest exports. Call with mu held.
func (v *vm) closeGuests() {
	for id, g := range v.guests {
		g.c.Close()
		if v.run != nil && v.run.alive() {
			ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
			v.run.delExport(ctx, g.export)
			cancel()
		}
		delete(v.guests, id)
	}
}
