// Package fake is an in-memory hypervisor for tests: it implements every
// interface of package hypervisor, needs no server, and lets a test play
// the guest (write to disks while snapshots are open), the administrator
// (reset change tracking) and bad luck (inject faults).
//
// # Disks
//
// A disk made by [Hypervisor.AddVM] or [Hypervisor.CreateVM] lives in memory
// as a sparse map of 64 KiB blocks: only written blocks take memory, so a
// 100 GiB disk costs nothing until written, and writing a whole block of
// zeros frees it. A disk made by [Hypervisor.AddFileVM] is a raw image
// file on local disk; guest writes go to the file, and the fake keeps in
// memory only the old content of blocks that open snapshots still need.
// AllocatedExtents of a file-backed disk come from SEEK_DATA/SEEK_HOLE.
//
// # Snapshots
//
// Snapshots are copy-on-write and cost nothing to take: a snapshot refers to
// the blocks the disk had, and a later write replaces a block instead of
// changing it. A snapshot's disks can be read concurrently and without any
// lock shared with other disks. [Hypervisor.OpenSnapshots] counts the
// snapshots not yet released, for leak checks.
//
// # Change tracking
//
// Every disk is divided into chunks of Options.Granularity bytes (default
// [DefaultGranularity]). Each write stamps the chunks it touches with the
// disk's current generation; a snapshot takes the stamps with it and starts
// a new generation. A change token names a VM, a disk, a tracking epoch and
// a generation, so ChangedExtents(token) is every chunk stamped after the
// token's generation. Reported ranges are therefore exact to the
// granularity: they over-report by less than one chunk at each end of a
// write, and never miss one. [Hypervisor.ResetChangeTracking] starts a new
// epoch, which makes every earlier token, and the tokens of snapshots taken
// before, invalid (ErrTokenInvalid), as would a crash on a real hypervisor.
// Tokens of another fake.Hypervisor, garbage and tokens from a later
// snapshot than the disk being asked are invalid too.
// [Hypervisor.SetChangeTracking] turns tracking off for a VM, so that its
// snapshots carry empty tokens, and on again.
//
// # Power and consistency
//
// A VM's power state is only a field: a stopped VM's disks can still be
// written by WriteDisk (the test's hand on the disk) and snapshotted.
// OpenDiskForWrite needs a stopped VM (else ErrConflict), and Start refuses
// (ErrConflict) while a disk of the VM is open for writing. The guest can
// quiesce if Options.Quiesce is set and the VM is running; otherwise an
// application-consistent snapshot gives ErrUnsupported, or, with
// AllowCrashFallback, a crash-consistent snapshot with a Note saying why.
//
// # Observing the caller
//
// [Hypervisor.Inject] makes chosen calls fail or wait; see [Fault] and
// [Hypervisor.PendingFaults]. [Hypervisor.Stats] counts snapshots, reads
// and writes made through the contract, and [Hypervisor.OpenSnapshots] the
// snapshots not released, so a test can assert that an incremental backup
// read only what changed and that nothing leaked.
//
// # Conformance
//
// The fake passes package hypervisortest's suite in all its modes (in
// memory, file-backed, with and without change tracking and extents) under
// the race detector; its test file shows the harness.
package fake

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// DefaultGranularity is the change tracking granularity used when
// Options.Granularity is zero.
const DefaultGranularity = 64 << 10

// Options configure a Hypervisor. The zero value is a fake with change
// tracking at DefaultGranularity, allocated extents, and a guest that cannot
// quiesce.
type Options struct {
	// Granularity is the change tracking granularity in bytes: a power
	// of two of at least 512. Zero means DefaultGranularity.
	Granularity int64
	// NoChangeTracking makes snapshot disks (and writable disks) not
	// implement ChangeTracker (ChangeReporter), like a hypervisor
	// without CBT.
	NoChangeTracking bool
	// NoExtents makes snapshot disks (and writable disks) not implement
	// ExtentReporter.
	NoExtents bool
	// Quiesce says the guests can be quiesced: application-consistent
	// snapshots of running VMs succeed.
	Quiesce bool
	// IgnoreShutdown plays a guest that ignores the request to shut
	// down: Shutdown of a running VM waits until its context ends and
	// returns the context's error, so a caller's fallback to PowerOff
	// can be tested.
	IgnoreShutdown bool
}

// Hypervisor is an in-memory hypervisor. It implements
// hypervisor.Hypervisor, PowerController, DiskWriter and Creator, and is
// safe for concurrent use. Its zero value is not usable; call New.
type Hypervisor struct {
	opts     Options
	instance string // in every token, so another fake's tokens are invalid

	mu      sync.Mutex // guards everything below
	vms     map[string]*vm
	order   []string // VM ids in the order they were added
	seq     int      // for VM ids
	snaps   int      // for snapshot ids
	macs    int      // for made-up MAC addresses
	open    int      // snapshots not released
	removed []*vm    // removed VMs, whose files Close still closes

	faults faults
	stats  struct{ snapshots, reads, bytesRead, writes, bytesWritten atomic.Int64 }
}

// Stats counts what callers did through the hypervisor contract; the test's
// own WriteDisk and ReadDisk calls are not counted. Tests use it to check,
// for instance, that an incremental backup read only what changed.
type Stats struct {
	Snapshots    int64 // snapshots taken
	Reads        int64 // successful ReadAt calls on snapshot disks
	BytesRead    int64 // bytes they returned
	Writes       int64 // successful WriteAt calls on writable disks
	BytesWritten int64 // bytes they wrote
}

// Stats returns the counts so far.
func (h *Hypervisor) Stats() Stats {
	return Stats{
		Snapshots:    h.stats.snapshots.Load(),
		Reads:        h.stats.reads.Load(),
		BytesRead:    h.stats.bytesRead.Load(),
		Writes:       h.stats.writes.Load(),
		BytesWritten: h.stats.bytesWritten.Load(),
	}
}

var (
	_ hypervisor.Hypervisor      = (*Hypervisor)(nil)
	_ hypervisor.PowerController = (*Hypervisor)(nil)
	_ hypervisor.DiskWriter      = (*Hypervisor)(nil)
	_ hypervisor.Creator         = (*Hypervisor)(nil)
)

type vm struct {
	desc    hypervisor.VM // Disks in the order of disks
	disks   []*disk
	writers int // disks open for writing
}

func (v *vm) disk(id string) *disk {
	for _, d := range v.disks {
		if d.id == id {
			return d
		}
	}
	return nil
}

// disk is one VM disk: its content and its change tracking.
type disk struct {
	id     string
	size   int64
	st     store
	writer bool // open for writing; guarded by Hypervisor.mu

	mu    sync.RWMutex // writes and snapshots hold it exclusively; reads of the current content share it
	epoch uint64
	gen   uint64           // generation that writes are stamped with
	dirty map[int64]uint64 // granularity chunk -> generation of its last write; nil without tracking
}

// New returns an empty fake hypervisor. A nil opts means the zero Options.
// New panics if opts.Granularity is not a power of two of at least 512: a
// fake set up wrongly is a bug in the test.
func New(opts *Options) *Hypervisor {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Granularity == 0 {
		o.Granularity = DefaultGranularity
	}
	if o.Granularity < 512 || o.Granularity&(o.Granularity-1) != 0 {
		panic(fmt.Sprintf("fake: Options.Granularity %d is not a power of two >= 512", o.Granularity))
	}
	var b [6]byte
	rand.Read(b[:])
	return &Hypervisor{opts: o, instance: hex.EncodeToString(b[:]), vms: map[string]*vm{}}
}

// Granularity returns the change tracking granularity in bytes.
func (h *Hypervisor) Granularity() int64 { return h.opts.Granularity }

// Close closes the image files of file-backed disks. In-memory disks need
// no closing. The Hypervisor must not be used afterwards.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	var errs []error
	vms := h.removed
	for _, id := range h.order {
		vms = append(vms, h.vms[id])
	}
	for _, v := range vms {
		for _, d := range v.disks {
			if err := d.st.close(); err != nil {
				errs = append(errs, fmt.Errorf("fake: close disk %s of vm %s: %w", d.id, v.desc.ID, err))
			}
		}
	}
	return errors.Join(errs...)
}

// AddVM adds a VM with zero-filled in-memory disks of the sizes in
// vm.Disks, and returns it as VM would. Empty ids (of the VM, its disks and
// NICs) are filled in ("vm-1", "disk-1", "nic-1", ...), and so are empty
// NIC MACs (52:54:00:...); an empty Power
// means running. A VM id already in use gives ErrConflict; a disk size that
// is not positive or a duplicate disk id is an error.
func (h *Hypervisor) AddVM(vm hypervisor.VM) (hypervisor.VM, error) {
	desc := copyVM(vm)
	var stores []store
	for i, d := range desc.Disks {
		if d.Size <= 0 {
			return hypervisor.VM{}, fmt.Errorf("fake: add vm %q: disk %d: size %d is not positive", desc.Name, i, d.Size)
		}
		stores = append(stores, newMemStore(d.Size))
	}
	return h.add(desc, stores, false)
}

// AddFileVM adds a running VM named name whose disks are the raw image
// files at imagePaths (opened read-write; sparse files are cheap), and
// returns it as VM would. Disk i gets the id "disk-<i+1>", the file's base
// name as its name and the file's size as its size; the first disk boots.
// Guest writes and in-place restores write to the files; snapshots keep
// what they need in memory. Call Close to close the files.
func (h *Hypervisor) AddFileVM(name string, imagePaths ...string) (hypervisor.VM, error) {
	desc := hypervisor.VM{Name: name, CPUs: 1, MemoryB: 512 << 20, Power: hypervisor.PowerRunning}
	var stores []store
	fail := func(err error) (hypervisor.VM, error) {
		for _, s := range stores {
			s.close()
		}
		return hypervisor.VM{}, fmt.Errorf("fake: add file vm %q: %w", name, err)
	}
	for i, p := range imagePaths {
		s, err := openFileStore(p)
		if err != nil {
			return fail(err)
		}
		stores = append(stores, s)
		info := hypervisor.DiskInfo{ID: "disk-" + strconv.Itoa(i+1), Name: filepath.Base(p), Size: s.size, Bus: "virtio"}
		if i == 0 {
			info.BootOrder = 1
		}
		desc.Disks = append(desc.Disks, info)
	}
	vm, err := h.add(desc, stores, false)
	if err != nil {
		return fail(err)
	}
	return vm, nil
}

// add registers a VM whose disks are the given stores. With uniqueName, a
// name already in use gives ErrConflict.
func (h *Hypervisor) add(desc hypervisor.VM, stores []store, uniqueName bool) (hypervisor.VM, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if uniqueName {
		for _, id := range h.order {
			if h.vms[id].desc.Name == desc.Name {
				return hypervisor.VM{}, fmt.Errorf("fake: add vm %q: name used by vm %q: %w", desc.Name, id, hypervisor.ErrConflict)
			}
		}
	}
	if desc.ID == "" {
		desc.ID = h.newID("vm", func(id string) bool { return h.vms[id] != nil })
	}
	if h.vms[desc.ID] != nil {
		return hypervisor.VM{}, fmt.Errorf("fake: add vm %q: id %q: %w", desc.Name, desc.ID, hypervisor.ErrConflict)
	}
	if desc.Power == "" {
		desc.Power = hypervisor.PowerRunning
	}
	v := &vm{}
	used := map[string]bool{}
	for _, d := range desc.Disks {
		used[d.ID] = d.ID != ""
	}
	for i := range desc.Disks {
		d := &desc.Disks[i]
		if d.ID == "" {
			for n := i + 1; ; n++ {
				if id := "disk-" + strconv.Itoa(n); !used[id] {
					d.ID, used[id] = id, true
					break
				}
			}
		}
		if v.disk(d.ID) != nil {
			return hypervisor.VM{}, fmt.Errorf("fake: add vm %q: duplicate disk id %q", desc.Name, d.ID)
		}
		v.disks = append(v.disks, h.newDisk(d.ID, d.Size, stores[i]))
	}
	for i := range desc.NICs {
		n := &desc.NICs[i]
		if n.ID == "" {
			n.ID = "nic-" + strconv.Itoa(i+1)
		}
		if n.MAC == "" {
			h.macs++
			n.MAC = fmt.Sprintf("52:54:00:%02x:%02x:%02x", h.macs>>16&0xff, h.macs>>8&0xff, h.macs&0xff)
		}
	}
	v.desc = desc
	h.vms[desc.ID] = v
	h.order = append(h.order, desc.ID)
	return copyVM(desc), nil
}

// RemoveVM deletes a VM, as an administrator might between a plan's
// selection and its backup: afterwards every method given its id returns
// ErrNotFound. Snapshots already taken stay readable until released, and
// image files of a file-backed VM stay open until Close. A VM with a disk
// open for writing gives ErrConflict.
func (h *Hypervisor) RemoveVM(vmID string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, _, err := h.lookup("remove vm", vmID, "")
	if err != nil {
		return err
	}
	if v.writers > 0 {
		return fmt.Errorf("fake: remove vm %q: %d disk(s) open for writing: %w", vmID, v.writers, hypervisor.ErrConflict)
	}
	delete(h.vms, vmID)
	h.order = slices.DeleteFunc(h.order, func(id string) bool { return id == vmID })
	h.removed = append(h.removed, v)
	return nil
}

func (h *Hypervisor) newDisk(id string, size int64, st store) *disk {
	d := &disk{id: id, size: size, st: st, gen: 1}
	if !h.opts.NoChangeTracking {
		d.dirty = map[int64]uint64{}
	}
	return d
}

// newID returns prefix-N for the next N not taken. Callers hold h.mu.
func (h *Hypervisor) newID(prefix string, taken func(string) bool) string {
	for {
		h.seq++
		if id := prefix + "-" + strconv.Itoa(h.seq); !taken(id) {
			return id
		}
	}
}

// lookup returns a VM and, if diskID is not empty, its disk; it wraps
// ErrNotFound. Callers hold h.mu.
func (h *Hypervisor) lookup(op, vmID, diskID string) (*vm, *disk, error) {
	v := h.vms[vmID]
	if v == nil {
		return nil, nil, fmt.Errorf("fake: %s: vm %q: %w", op, vmID, hypervisor.ErrNotFound)
	}
	if diskID == "" {
		return v, nil, nil
	}
	d := v.disk(diskID)
	if d == nil {
		return nil, nil, fmt.Errorf("fake: %s: disk %q of vm %q: %w", op, diskID, vmID, hypervisor.ErrNotFound)
	}
	return v, d, nil
}

// ListVMs implements hypervisor.Hypervisor. VMs are listed in the order
// they were added or created.
func (h *Hypervisor) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := h.begin(ctx, OpListVMs, "", ""); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]hypervisor.VM, 0, len(h.order))
	for _, id := range h.order {
		out = append(out, copyVM(h.vms[id].desc))
	}
	return out, nil
}

// VM implements hypervisor.Hypervisor.
func (h *Hypervisor) VM(ctx context.Context, id string) (hypervisor.VM, error) {
	if err := h.begin(ctx, OpVM, id, ""); err != nil {
		return hypervisor.VM{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v, _, err := h.lookup("get vm", id, "")
	if err != nil {
		return hypervisor.VM{}, err
	}
	return copyVM(v.desc), nil
}

// begin starts a call: it checks the context and applies faults.
func (h *Hypervisor) begin(ctx context.Context, op Op, vmID, diskID string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake: %s: %w", op, err)
	}
	return h.hit(ctx, op, vmID, diskID)
}

// WriteDisk writes p at off to a disk as the guest would, whatever the VM's
// power state and whatever snapshots are open; they do not see the write.
// The write is recorded by change tracking. It is never faulted.
func (h *Hypervisor) WriteDisk(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake: write disk: %w", err)
	}
	d, err := h.diskOf("write disk", vmID, diskID)
	if err != nil {
		return err
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return fmt.Errorf("fake: write disk %q of vm %q: %d bytes at %d outside the disk's %d bytes", diskID, vmID, len(p), off, d.size)
	}
	if err := d.write(p, off, h.opts.Granularity); err != nil {
		return fmt.Errorf("fake: write disk %q of vm %q: %w", diskID, vmID, err)
	}
	return nil
}

// ReadDisk reads the current content of a disk at off into p. The range
// must lie within the disk. It is never faulted.
func (h *Hypervisor) ReadDisk(ctx context.Context, vmID, diskID string, off int64, p []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake: read disk: %w", err)
	}
	d, err := h.diskOf("read disk", vmID, diskID)
	if err != nil {
		return err
	}
	if off < 0 || off+int64(len(p)) > d.size {
		return fmt.Errorf("fake: read disk %q of vm %q: %d bytes at %d outside the disk's %d bytes", diskID, vmID, len(p), off, d.size)
	}
	if err := d.read(p, off); err != nil {
		return fmt.Errorf("fake: read disk %q of vm %q: %w", diskID, vmID, err)
	}
	return nil
}

func (h *Hypervisor) diskOf(op, vmID, diskID string) (*disk, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	_, d, err := h.lookup(op, vmID, diskID)
	return d, err
}

// ResetChangeTracking forgets the change tracking of every disk of the VM,
// as a crash of a real hypervisor would: every token issued for them so
// far, including those of snapshots still open, becomes invalid
// (ErrTokenInvalid). Snapshots taken afterwards carry new tokens. Unknown
// VMs are ignored.
func (h *Hypervisor) ResetChangeTracking(vmID string) {
	h.mu.Lock()
	v := h.vms[vmID]
	h.mu.Unlock()
	if v == nil {
		return
	}
	for _, d := range v.disks {
		d.mu.Lock()
		d.epoch++
		if d.dirty != nil {
			d.dirty = map[int64]uint64{}
		}
		d.mu.Unlock()
	}
}

// SetChangeTracking turns change tracking of every disk of the VM off or
// on, as an administrator can on hypervisors where it is a per-VM setting.
// While it is off, snapshots of the VM carry an empty ChangeToken (the
// contract's "tracking is not active") and every token, old or new, gives
// ErrTokenInvalid. Turning it on starts afresh: the next snapshot issues a
// token that later snapshots honour. Tracking is on for every new VM
// (unless Options.NoChangeTracking). Unknown VMs are ignored.
func (h *Hypervisor) SetChangeTracking(vmID string, on bool) {
	if h.opts.NoChangeTracking {
		return
	}
	h.mu.Lock()
	v := h.vms[vmID]
	h.mu.Unlock()
	if v == nil {
		return
	}
	for _, d := range v.disks {
		d.mu.Lock()
		switch {
		case !on && d.dirty != nil:
			d.epoch++
			d.dirty = nil
		case on && d.dirty == nil:
			d.epoch++
			d.dirty = map[int64]uint64{}
		}
		d.mu.Unlock()
	}
}

// OpenSnapshots returns how many snapshots were taken and not released.
func (h *Hypervisor) OpenSnapshots() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

// write writes p at off (within the disk) and stamps the chunks of
// granularity g it touches.
func (d *disk) write(p []byte, off, g int64) error {
	if len(p) == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.st.writeAt(p, off); err != nil {
		return err
	}
	if d.dirty != nil {
		for c := off / g; c <= (off+int64(len(p))-1)/g; c++ {
			d.dirty[c] = d.gen
		}
	}
	return nil
}

func (d *disk) extents() ([]hypervisor.Extent, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.st.extents()
}

func (d *disk) read(p []byte, off int64) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.st.readAt(p, off)
}

// copyVM returns a deep copy, so callers never share maps or slices with
// the fake.
func copyVM(v hypervisor.VM) hypervisor.VM {
	if v.Labels != nil {
		m := make(map[string]string, len(v.Labels))
		for k, x := range v.Labels {
			m[k] = x
		}
		v.Labels = m
	}
	v.Disks = slices.Clone(v.Disks)
	v.NICs = slices.Clone(v.NICs)
	v.Raw = slices.Clone(v.Raw)
	return v
}
