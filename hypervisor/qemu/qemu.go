// Package qemu is a hypervisor backend for plain KVM/QEMU: a VM is a QEMU
// process that the backend starts (or attaches to by its QMP socket), with
// qcow2 disks. It implements [hypervisor.Hypervisor] with changed block
// tracking through QEMU's persistent dirty bitmaps, allocation extents, and
// the optional PowerController, DiskWriter and Creator.
//
// # VMs
//
// The backend knows the VMs it is told about: [Hypervisor.Define] registers
// a [VMSpec] (name, disks with their image files, NICs, and either nothing
// — the backend starts QEMU itself on Start — or the QMP socket of a QEMU
// that runs already). [Hypervisor.CreateVM] (rebuild) makes new qcow2
// images in Options.ImageDir and defines a stopped VM on them.
//
// A VM the backend starts runs qemu-system-x86_64 -machine none with each
// disk as two block nodes: the qcow2 format node (which holds the dirty
// bitmaps and is the source of snapshots) and a raw "guest" node on top of
// it through which all writes go, the place a guest device would sit. A
// machine type other than "none" (VMSpec.Machine) adds a virtio-blk device
// per disk on the guest node; VMSpec.ExtraArgs adds anything else (NICs,
// firmware, accelerator).
//
// When a VM is stopped, snapshots and disks opened for writing are served
// by a qemu-storage-daemon the backend starts on the VM's images for as long
// as they are held; Start refuses with ErrConflict meanwhile.
//
// # Snapshots
//
// A snapshot is taken by fleecing, as libvirt does: in one QMP transaction,
// for every disk, a new persistent dirty bitmap is added, the previous one
// is disabled, and a blockdev-backup job with sync=none copies what the
// guest overwrites into a temporary qcow2 file (Options.RunDir) whose
// backing node is the live disk. The temporary node is exported read-only
// over NBD on a unix socket, and disks are read through package
// internal/nbd. Release deletes the export, cancels the job, deletes the
// node and removes the file, waiting for QEMU's events, also with a
// cancelled context.
//
// # Change tracking
//
// Every disk carries a chain of persistent bitmaps named
// vmb-SEQ-NONCE: each records the writes between two consecutive
// snapshots, the last one is recording. A snapshot's change token is the
// name of the bitmap created with it. ChangedExtents(token) merges the
// bitmaps from the token's to the snapshot's into a temporary bitmap,
// exports it as the NBD meta context qemu:dirty-bitmap:NAME and reads it
// with NBD_CMD_BLOCK_STATUS. A token stays valid whatever happened to later
// snapshots, until its bitmap is pruned (Options.KeepBitmaps) or lost.
//
// QEMU writes persistent bitmaps to the qcow2 file only when it closes the
// image cleanly. A QEMU that was killed loses the bitmaps it created, and
// those it loaded come back "inconsistent": tokens that need them give
// ErrTokenInvalid (never a silent miss), and the next snapshot starts a new
// chain. Bitmap names carry a random nonce, so a new chain never revives
// an old token.
//
// # Power
//
// Start runs QEMU; PowerOff and (for machine "none") Shutdown quit it over
// QMP, which saves the bitmaps; Kill is a crash, for tests. A VM's Power is
// "running" while its QEMU process runs (paused CPUs included).
//
// # Tests and demos
//
// [Hypervisor.GuestWrite] writes to a running VM's disk as its guest would
// (through a writable NBD export of the guest node). HMP qemu-io would do
// the same, but it prints its result on QEMU's stdout, so a failed write
// could not be detected.
//
// # Consistency
//
// Snapshots are crash-consistent. An application-consistent snapshot
// freezes the guest's file systems through qemu-guest-agent
// (guest-fsfreeze-freeze / -thaw) if VMSpec.AgentSocket is set; otherwise
// it gives ErrUnsupported, or a crash-consistent snapshot with a Note when
// fallback is allowed.
package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Defaults for Options.
const (
	DefaultQEMU          = "qemu-system-x86_64"
	DefaultStorageDaemon = "qemu-storage-daemon"
	DefaultQEMUImg       = "qemu-img"
	// DefaultKeepBitmaps is how many bitmaps a disk's chain keeps: a token
	// older than this many snapshots is pruned and gives ErrTokenInvalid.
	DefaultKeepBitmaps = 16
	// DefaultIOTimeout bounds each ReadAt and WriteAt of a disk: a QEMU
	// that has not answered by then is taken for hung.
	DefaultIOTimeout = 5 * time.Minute
	// Granularity is the dirty bitmaps' granularity: ChangedExtents
	// reports whole 64 KiB blocks.
	Granularity = 64 << 10
)

// Options configures a Hypervisor. The zero value works if the QEMU
// binaries are on PATH.
type Options struct {
	// QEMU, StorageDaemon and QEMUImg are the binaries to run; empty
	// means DefaultQEMU, DefaultStorageDaemon, DefaultQEMUImg (looked up
	// in PATH).
	QEMU, StorageDaemon, QEMUImg string
	// RunDir holds the QMP and NBD sockets and the temporary fleecing
	// images. Empty means a new directory under os.TempDir(), removed by
	// Close. Unix socket paths must stay short (about 100 bytes).
	RunDir string
	// ImageDir is where CreateVM makes new disk images. Empty makes
	// CreateVM give ErrUnsupported.
	ImageDir string
	// KeepBitmaps is how many dirty bitmaps each disk keeps; zero means
	// DefaultKeepBitmaps.
	KeepBitmaps int
	// IOTimeout bounds each ReadAt and WriteAt of a snapshot's or
	// writable disk (they have no context); zero means DefaultIOTimeout.
	// When it expires the disk's connection is closed and the call fails.
	IOTimeout time.Duration
	// Logger receives notes about chains reset and cleanup failures; nil
	// means slog.Default().
	Logger *slog.Logger
}

// VMSpec describes a VM to the backend.
type VMSpec struct {
	// Name is the VM's unique name; it is also its id.
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	CPUs   int               `json:"cpus,omitempty"`
	// MemoryB is the guest memory in bytes.
	MemoryB  int64  `json:"memory_bytes,omitempty"`
	Firmware string `json:"firmware,omitempty"`
	// Machine is QEMU's -machine value for VMs the backend starts; empty
	// means "none" (no guest, only the disks).
	Machine string           `json:"machine,omitempty"`
	Disks   []DiskSpec       `json:"disks"`
	NICs    []hypervisor.NIC `json:"nics,omitempty"`
	// ExtraArgs are appended to the QEMU command line of a VM the backend
	// starts.
	ExtraArgs []string `json:"extra_args,omitempty"`
	// QMPSocket, if set, is the QMP unix socket of a QEMU that runs the VM
	// already (started by someone else); the backend attaches to it
	// instead of starting QEMU, and cannot Start it again after a
	// PowerOff.
	QMPSocket string `json:"qmp_socket,omitempty"`
	// AgentSocket, if set, is the unix socket of the VM's
	// qemu-guest-agent channel, used to freeze file systems for
	// application-consistent snapshots.
	AgentSocket string `json:"agent_socket,omitempty"`
}

// DiskSpec describes one disk of a VM.
type DiskSpec struct {
	// ID is the disk's id, unique within the VM; empty means "diskN".
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
	// Image is the image file's path.
	Image string `json:"image"`
	// Format must be "qcow2" (persistent dirty bitmaps need it); empty
	// means qcow2.
	Format string `json:"format,omitempty"`
	Bus    string `json:"bus,omitempty"`
	// BootOrder is 1 for the first boot disk, 0 for none.
	BootOrder int `json:"boot_order,omitempty"`
	// Node is the qcow2 format node's name in QEMU. The backend names it
	// for VMs it starts; for an attached QEMU it is required.
	Node string `json:"node,omitempty"`
	// GuestNode is the node guest writes go through (above Node). The
	// backend names it for VMs it starts; for an attached QEMU it may stay
	// empty.
	GuestNode string `json:"guest_node,omitempty"`
}

// Hypervisor is the QEMU backend. It is safe for concurrent use.
type Hypervisor struct {
	opts   Options
	log    *slog.Logger
	ownDir bool
	mu     sync.Mutex
	vms    map[string]*vm
	nextID uint64
	closed bool
	runSeq uint64
}

var (
	_ hypervisor.Hypervisor      = (*Hypervisor)(nil)
	_ hypervisor.PowerController = (*Hypervisor)(nil)
	_ hypervisor.DiskWriter      = (*Hypervisor)(nil)
	_ hypervisor.Creator         = (*Hypervisor)(nil)
	_ hypervisor.ExtentReporter  = (*disk)(nil)
	_ hypervisor.ChangeReporter  = (*writable)(nil)
	_ hypervisor.ExtentReporter  = (*writable)(nil)
)

// New returns a backend with no VMs. Close it to stop the processes it
// started.
func New(opts Options) (*Hypervisor, error) {
	if opts.QEMU == "" {
		opts.QEMU = DefaultQEMU
	}
	if opts.StorageDaemon == "" {
		opts.StorageDaemon = DefaultStorageDaemon
	}
	if opts.QEMUImg == "" {
		opts.QEMUImg = DefaultQEMUImg
	}
	if opts.IOTimeout <= 0 {
		opts.IOTimeout = DefaultIOTimeout
	}
	if opts.KeepBitmaps <= 0 {
		opts.KeepBitmaps = DefaultKeepBitmaps
	}
	h := &Hypervisor{opts: opts, log: opts.Logger, vms: map[string]*vm{}}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.opts.RunDir == "" {
		d, err := os.MkdirTemp("", "vmbq")
		if err != nil {
			return nil, fmt.Errorf("qemu: make run directory: %w", err)
		}
		h.opts.RunDir, h.ownDir = d, true
	}
	return h, nil
}

// Close stops the QEMU processes the backend started (cleanly, so that
// bitmaps are saved), detaches from attached ones, and removes its own
// run directory. Snapshots still held are released.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	vms := make([]*vm, 0, len(h.vms))
	for _, v := range h.vms {
		vms = append(vms, v)
	}
	h.mu.Unlock()
	var errs []error
	for _, v := range vms {
		if err := v.shutdownAll(); err != nil {
			errs = append(errs, err)
		}
	}
	if h.ownDir {
		os.RemoveAll(h.opts.RunDir)
	}
	return errors.Join(errs...)
}

// Define registers a VM. If spec.QMPSocket is set, the backend attaches to
// that QEMU now. Otherwise the VM is stopped until Start. A name already
// defined gives ErrConflict.
func (h *Hypervisor) Define(ctx context.Context, spec VMSpec) (hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: define %q: %w", spec.Name, err)
	}
	if spec.Name == "" {
		return hypervisor.VM{}, errors.New("qemu: define: empty VM name")
	}
	if len(spec.Disks) == 0 {
		return hypervisor.VM{}, fmt.Errorf("qemu: define %q: no disks", spec.Name)
	}
	spec.Disks = slices.Clone(spec.Disks)
	ids := map[string]bool{}
	for i := range spec.Disks {
		d := &spec.Disks[i]
		if d.ID == "" {
			d.ID = fmt.Sprintf("disk%d", i)
		}
		if ids[d.ID] {
			return hypervisor.VM{}, fmt.Errorf("qemu: define %q: duplicate disk id %q", spec.Name, d.ID)
		}
		ids[d.ID] = true
		if d.Format == "" {
			d.Format = "qcow2"
		}
		if d.Format != "qcow2" {
			return hypervisor.VM{}, fmt.Errorf("qemu: define %q: disk %q: format %q: %w (dirty bitmaps need qcow2)", spec.Name, d.ID, d.Format, hypervisor.ErrUnsupported)
		}
		if spec.QMPSocket == "" {
			d.Node = fmt.Sprintf("vmbd%d", i)
			d.GuestNode = fmt.Sprintf("vmbg%d", i)
		} else if d.Node == "" {
			return hypervisor.VM{}, fmt.Errorf("qemu: define %q: disk %q: the node name is required to attach", spec.Name, d.ID)
		}
		if d.Image == "" {
			return hypervisor.VM{}, fmt.Errorf("qemu: define %q: disk %q: no image path", spec.Name, d.ID)
		}
	}
	v := &vm{h: h, spec: spec, writers: map[string]bool{}, snaps: map[string]*snapshot{}}
	v.mu.init()
	sizes, err := h.imageSizes(ctx, spec.Disks)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: define %q: %w", spec.Name, err)
	}
	v.sizes = sizes
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return hypervisor.VM{}, errors.New("qemu: define: backend closed")
	}
	if _, ok := h.vms[spec.Name]; ok {
		h.mu.Unlock()
		return hypervisor.VM{}, fmt.Errorf("qemu: define %q: name %w", spec.Name, hypervisor.ErrConflict)
	}
	h.vms[spec.Name] = v
	h.mu.Unlock()
	if spec.QMPSocket != "" {
		v.mu.Lock()
		err := v.attach(ctx)
		v.mu.Unlock()
		if err != nil {
			h.mu.Lock()
			delete(h.vms, spec.Name)
			h.mu.Unlock()
			return hypervisor.VM{}, err
		}
	}
	return v.describe(), nil
}

// Remove forgets a VM; a running QEMU the backend started is stopped
// first. Image files are left alone.
func (h *Hypervisor) Remove(ctx context.Context, vmID string) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	err = v.shutdownAll()
	h.mu.Lock()
	delete(h.vms, vmID)
	h.mu.Unlock()
	return err
}

func (h *Hypervisor) lookup(id string) (*vm, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.vms[id]
	if !ok {
		return nil, fmt.Errorf("qemu: VM %q: %w", id, hypervisor.ErrNotFound)
	}
	return v, nil
}

// ListVMs returns every defined VM.
func (h *Hypervisor) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: list VMs: %w", err)
	}
	h.mu.Lock()
	vms := make([]*vm, 0, len(h.vms))
	for _, v := range h.vms {
		vms = append(vms, v)
	}
	h.mu.Unlock()
	out := make([]hypervisor.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, v.describe())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// VM returns one VM.
func (h *Hypervisor) VM(ctx context.Context, id string) (hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: VM %q: %w", id, err)
	}
	v, err := h.lookup(id)
	if err != nil {
		return hypervisor.VM{}, err
	}
	return v.describe(), nil
}

// OpenSnapshots returns how many snapshots are held (taken, not released).
func (h *Hypervisor) OpenSnapshots() int {
	h.mu.Lock()
	vms := make([]*vm, 0, len(h.vms))
	for _, v := range h.vms {
		vms = append(vms, v)
	}
	h.mu.Unlock()
	n := 0
	for _, v := range vms {
		v.mu.Lock()
		n += len(v.snaps)
		v.mu.Unlock()
	}
	return n
}

// imageSizes reads the virtual sizes of the images with qemu-img info
// (with -U, so images in use can be inspected).
func (h *Hypervisor) imageSizes(ctx context.Context, disks []DiskSpec) ([]int64, error) {
	var sizes []int64
	for _, d := range disks {
		out, err := exec.CommandContext(ctx, h.opts.QEMUImg, "info", "-U", "--output=json", "-f", d.Format, d.Image).Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
			}
			return nil, fmt.Errorf("qemu-img info %s: %w", d.Image, err)
		}
		var info struct {
			VirtualSize int64 `json:"virtual-size"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			return nil, fmt.Errorf("qemu-img info %s: %w", d.Image, err)
		}
		sizes = append(sizes, info.VirtualSize)
	}
	return sizes, nil
}

// uniq returns a new short name unique within the backend.
func (h *Hypervisor) uniq(prefix string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nextID++
	return fmt.Sprintf("%s%d", prefix, h.nextID)
}

func nonce() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (h *Hypervisor) runPath(name string) string { return filepath.Join(h.opts.RunDir, name) }
