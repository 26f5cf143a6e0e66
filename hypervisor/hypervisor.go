// Package hypervisor is the contract between the backup engine and a
// hypervisor: everything vmbackup needs from a platform that runs virtual
// machines, and nothing more.
//
// # Shape
//
// The required interface, [Hypervisor], lists VMs and takes snapshots. A
// [Snapshot] opens its disks for reading as [Disk] values (an io.ReaderAt with
// a size). Everything else is optional and found by type assertion, the way
// io.WriterTo is:
//
//   - [ExtentReporter] on a Disk: which byte ranges are allocated, so holes
//     are never read.
//   - [ChangeTracker] on a Disk: changed block tracking (CBT). Which ranges
//     changed since an earlier snapshot's token, and this snapshot's token.
//   - [PowerController] on a Hypervisor: graceful shutdown, forced power off,
//     start.
//   - [DiskWriter] on a Hypervisor: open an existing VM's disk for writing
//     (restore in place). The returned [WritableDisk] may also implement
//     [ChangeReporter] so that only changed ranges are rewritten.
//   - [Creator] on a Hypervisor: create a new VM (rebuild).
//
// A backend that lacks an ability simply does not implement its interface;
// the engine then falls back (full reads, hash-based incrementals) or reports
// [ErrUnsupported] to the caller.
//
// # Terms
//
//   - A snapshot is a point-in-time image of all disks of one VM, taken at
//     one instant. It holds resources on the hypervisor until released.
//   - A change token is an opaque string that a snapshot's disk issues to
//     name the disk's content as captured by that snapshot. A later
//     snapshot (or a disk opened for writing) answers "which ranges may
//     differ from the content the token names?". Tokens are stored by the
//     engine between backups, so they must be strings that stay valid
//     across processes and after the issuing snapshot is released.
//   - An extent is a byte range [Offset, Offset+Length) of a disk. Lists of
//     extents returned by any method are sorted by Offset, non-overlapping
//     (adjacent extents are allowed), each with Length > 0, and lie within
//     [0, Size).
//
// # Errors
//
// Backends wrap their errors with context (fmt.Errorf("...: %w", err)) and
// wrap one of the sentinels below where the caller must branch on the class:
// [ErrNotFound], [ErrUnsupported], [ErrConflict], [ErrTokenInvalid]. A
// context that is cancelled (or past its deadline) when a method is called,
// or while it waits, makes the method return an error that wraps ctx.Err(),
// so errors.Is(err, context.Canceled) holds; the one exception is
// Snapshot.Release, which must release anyway. Methods without a context
// (ReadAt, WriteAt, Close) are bounded by the backend's own timeouts.
//
// # How the engine uses it
//
// A backup run does, for each VM:
//
//	snap, err := hv.Snapshot(ctx, vmID, hypervisor.SnapshotOptions{})
//	defer snap.Release(context.WithoutCancel(ctx))
//	for _, d := range snap.Info().VM.Disks {
//		disk, err := snap.OpenDisk(ctx, d.ID)
//		// ChangedExtents(ctx, previousToken) if disk is a ChangeTracker,
//		// else AllocatedExtents if it is an ExtentReporter, else all of it;
//		// ReadAt those ranges (concurrently); remember ChangeToken().
//		disk.Close()
//	}
//
// # Conformance
//
// Package hypervisortest holds the conformance suite that every
// implementation, fakes included, must pass. Third-party backends can run it
// too. Package fake is an in-memory implementation of every interface here,
// with fault injection, for embedders' tests.
package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"io"
)

// Sentinel errors. Backends wrap them; callers test with errors.Is.
var (
	// ErrNotFound: the VM, disk or snapshot does not exist (an unknown
	// VM id given to any method, an unknown disk id given to OpenDisk or
	// OpenDiskForWrite).
	ErrNotFound = errors.New("hypervisor: not found")
	// ErrUnsupported: the backend cannot do what was asked (a consistency
	// level it cannot take or does not know, an option, an operation).
	// Asking again the same way will fail again.
	ErrUnsupported = errors.New("hypervisor: unsupported")
	// ErrConflict: the object is in a state that forbids the operation (a
	// running VM's disk opened for writing, a VM busy with another task, a
	// name already taken). Retrying later may succeed.
	ErrConflict = errors.New("hypervisor: conflict")
	// ErrTokenInvalid: a change token is no longer honoured (tracking was
	// reset, the VM stopped uncleanly, the disk was resized, the token was
	// pruned or never issued by this hypervisor for this disk, the token is
	// empty or garbage). The engine answers it with a full backup and
	// records why; it is never a reason to fail a job. A backend that
	// cannot tell whether it honours a token must return it rather than
	// guess: a wrong answer makes an incremental backup miss changes.
	ErrTokenInvalid = errors.New("hypervisor: change token invalid")
)

// PowerState is a VM's power state.
type PowerState string

// Power states. Backends map their own states onto these; anything else is
// PowerUnknown.
const (
	PowerRunning   PowerState = "running"
	PowerStopped   PowerState = "stopped"
	PowerSuspended PowerState = "suspended"
	PowerUnknown   PowerState = "unknown"
)

// Consistency says how consistent a snapshot's disks are with each other and
// with the guest's file systems.
type Consistency string

// Consistency levels.
const (
	// CrashConsistent: all disks captured at one instant, as if the power
	// had been cut. Every backend must offer it.
	CrashConsistent Consistency = "crash"
	// ApplicationConsistent: the guest flushed and froze its file systems
	// (guest agent / guest tools) before the disks were captured.
	ApplicationConsistent Consistency = "application"
)

// VM describes a virtual machine in hypervisor-neutral terms, plus the
// hypervisor's own configuration in Raw for a faithful rebuild on the same
// kind of hypervisor.
type VM struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Labels   map[string]string `json:"labels,omitempty"`
	CPUs     int               `json:"cpus"`
	MemoryB  int64             `json:"memory_bytes"`
	Firmware string            `json:"firmware,omitempty"` // "bios" or "uefi"; empty if unknown
	Power    PowerState        `json:"power"`
	Disks    []DiskInfo        `json:"disks"`
	NICs     []NIC             `json:"nics,omitempty"`
	// Placement is where the VM runs (cluster, host, storage), as far as the
	// hypervisor has such notions.
	Placement Placement `json:"placement,omitzero"`
	// Raw is the hypervisor's own description of the VM, opaque to the
	// engine; it is stored in restore points and handed back to Creator.
	Raw json.RawMessage `json:"raw,omitempty"`
}

// DiskInfo describes one disk of a VM.
type DiskInfo struct {
	// ID is stable for the life of the disk and unique within the VM; it is
	// what OpenDisk, OpenDiskForWrite and change tokens refer to.
	ID   string `json:"id"`
	Name string `json:"name,omitempty"`
	// Size is the disk's virtual size in bytes.
	Size int64 `json:"size"`
	// Bus is the controller ("virtio", "scsi", "ide", "sata"); informative.
	Bus string `json:"bus,omitempty"`
	// BootOrder is 1 for the first boot device; 0 means not bootable.
	BootOrder int `json:"boot_order,omitempty"`
}

// NIC describes one network interface of a VM.
type NIC struct {
	ID    string `json:"id,omitempty"`
	MAC   string `json:"mac,omitempty"`
	Model string `json:"model,omitempty"` // "virtio", "e1000", ...
	// Network names what the NIC is connected to (a VLAN id, a bridge, a
	// network name), in the hypervisor's terms.
	Network   string `json:"network,omitempty"`
	Connected bool   `json:"connected"`
}

// Placement says where a VM runs or should be created. Empty fields mean
// "wherever the hypervisor chooses".
type Placement struct {
	Cluster string `json:"cluster,omitempty"`
	Host    string `json:"host,omitempty"`
	Storage string `json:"storage,omitempty"`
}

// Extent is a byte range of a disk: [Offset, Offset+Length).
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End returns the first byte after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Hypervisor is the required part of the contract: find VMs and snapshot
// them. Implementations must be safe for concurrent use.
type Hypervisor interface {
	// ListVMs returns every VM the backend can back up, in any order.
	ListVMs(ctx context.Context) ([]VM, error)
	// VM returns one VM by id; an unknown id gives an error wrapping
	// ErrNotFound.
	VM(ctx context.Context, id string) (VM, error)
	// Snapshot captures all of the VM's disks at one instant, whatever
	// the VM's power state (a stopped VM is snapshotted as it is). It
	// returns ErrNotFound for an unknown VM. If opts asks for application
	// consistency and the guest cannot be quiesced (no guest agent, VM
	// not running), it returns an error wrapping ErrUnsupported unless
	// opts.AllowCrashFallback is set, in which case it takes a
	// crash-consistent snapshot and says why in SnapshotInfo.Note. A
	// Consistency value the backend does not know gives ErrUnsupported,
	// fallback or not. The caller must Release the snapshot on every
	// path; if Snapshot returns an error, nothing is left to release (a
	// backend that fails half-way cleans up before returning).
	Snapshot(ctx context.Context, vmID string, opts SnapshotOptions) (Snapshot, error)
}

// SnapshotOptions asks for a kind of snapshot.
type SnapshotOptions struct {
	// Consistency asked for; the zero value means CrashConsistent.
	Consistency Consistency
	// AllowCrashFallback lets an application-consistent request fall back
	// to crash consistency when the guest cannot be quiesced.
	AllowCrashFallback bool
	// Name is a label for the snapshot where the hypervisor shows one.
	Name string
}

// SnapshotInfo describes a taken snapshot.
type SnapshotInfo struct {
	// ID names the snapshot; it is unique among the backend's snapshots.
	ID string
	// VM is the VM's configuration as frozen in the snapshot; its Disks are
	// the disks OpenDisk can open.
	VM VM
	// Consistency is what was actually taken.
	Consistency Consistency
	// Note says why the consistency differs from what was asked, if it
	// does; it is not empty after a fallback.
	Note string
}

// Snapshot is a point-in-time image of all of a VM's disks. Reads see the
// disks exactly as they were when the snapshot was taken, whatever the guest
// writes afterwards.
type Snapshot interface {
	// Info describes the snapshot; it does no I/O and may be called at
	// any time, also after Release.
	Info() SnapshotInfo
	// OpenDisk opens one of the snapshot's disks for reading. An unknown
	// disk id gives ErrNotFound. Several disks may be open at once, and a
	// Disk's ReadAt may be called concurrently.
	OpenDisk(ctx context.Context, diskID string) (Disk, error)
	// Release frees the snapshot and everything it holds on the hypervisor.
	// It must be called on every path; calling it again is harmless and
	// returns nil. Disks opened from the snapshot must not be used after;
	// ReadAt calls still in flight when Release is called (after a
	// cancellation) may fail, but never return data other than the
	// snapshot's.
	// Release must release, and return nil, even if ctx is already
	// cancelled, so that cleanup after cancellation does not leak (use
	// context.WithoutCancel inside if needed).
	Release(ctx context.Context) error
}

// Disk is a snapshot's disk opened for reading.
//
// ReadAt follows io.ReaderAt exactly, with Size as the end: a read that
// lies within the disk fills p and returns len(p) and nil (or io.EOF if it
// ends exactly at Size); a read that crosses Size returns the bytes up to
// Size and io.EOF; a read at or past Size returns 0 and io.EOF; a negative
// offset is an error. ReadAt may be called concurrently from many
// goroutines, and the backend should serve them in parallel (the engine
// reads with several workers). What a Disk returns never changes while its
// snapshot is held, whatever the guest writes.
type Disk interface {
	io.ReaderAt
	// Size is the disk's size in bytes, the same as the DiskInfo.Size in
	// the snapshot's Info.
	Size() int64
	// Close releases what the open disk holds (a connection, a file).
	// The snapshot stays held until Release.
	Close() error
}

// ExtentReporter is implemented by a Disk that knows which ranges hold data.
// Ranges not reported read as zeros, so the engine skips them. Reporting
// too much is allowed (at worst zeros are read); missing a non-zero byte is
// a bug. Extents are sorted, non-overlapping, non-empty and within Size.
type ExtentReporter interface {
	AllocatedExtents(ctx context.Context) ([]Extent, error)
}

// ChangeReporter reports the ranges of a disk that may differ from what it
// was when the snapshot that issued token was taken. It may over-report (at
// its tracking granularity) but never miss a write: every byte whose
// content differs must lie in a reported extent. A token it does not honour
// gives an error wrapping ErrTokenInvalid; so do an empty token, garbage,
// and a token that names no earlier state of this disk. Extents are sorted,
// non-overlapping, non-empty and within the disk's size.
//
// On a snapshot's Disk the answer compares the token's content with the
// snapshot's, so it does not change as the guest writes on; a snapshot's
// own token gives no extents. On a WritableDisk it compares with the
// disk's current content, including the writes made through it.
type ChangeReporter interface {
	ChangedExtents(ctx context.Context, token string) ([]Extent, error)
}

// ChangeTracker is implemented by a snapshot Disk with changed block
// tracking. ChangeToken is the token that names this snapshot's state of the
// disk; a later snapshot's ChangedExtents(ctx, token) reports what changed
// since. A token stays valid after its snapshot is released, and whether or
// not snapshots taken after it were backed up successfully (taken,
// read or not, released), so a failed backup never makes the next
// incremental miss changes. Writes made through a WritableDisk (a restore
// in place) are changes like the guest's: the next incremental sees them.
// An empty ChangeToken means tracking is not active for this disk (the next
// backup will be full; a backend may start tracking at this snapshot and
// issue a token with the next one).
//
// Example: snapshot S1 issues token T1 and is backed up and released; the
// guest writes range A; snapshot S2 is taken but its backup fails and it is
// released; the guest writes range B; snapshot S3's ChangedExtents(ctx, T1)
// covers A and B.
type ChangeTracker interface {
	ChangeReporter
	ChangeToken() string
}

// PowerController controls a VM's power. Each method waits until the VM
// has reached the state (or ctx ends) and is a no-op if it is already there;
// afterwards Hypervisor.VM reports the new Power. An unknown VM gives
// ErrNotFound.
type PowerController interface {
	// Shutdown asks the guest to shut down and waits until it is off. A
	// guest that ignores the request keeps Shutdown waiting until ctx
	// ends; callers bound ctx and fall back to PowerOff.
	Shutdown(ctx context.Context, vmID string) error
	// PowerOff cuts the power.
	PowerOff(ctx context.Context, vmID string) error
	// Start powers the VM on. It may give ErrConflict while a disk of
	// the VM is open for writing.
	Start(ctx context.Context, vmID string) error
}

// DiskWriter opens an existing VM's disk for writing. The VM must be
// stopped (not running, not suspended), else the error wraps ErrConflict;
// an unknown VM or disk gives ErrNotFound. A disk may also refuse a second
// concurrent opening with ErrConflict.
type DiskWriter interface {
	OpenDiskForWrite(ctx context.Context, vmID, diskID string) (WritableDisk, error)
}

// WritableDisk is a VM disk opened for writing. ReadAt returns what the disk
// will hold after Close given the writes so far, so a restore can compare
// before writing; it follows io.ReaderAt with Size as the end, like Disk.
// WriteAt of a range that does not lie within [0, Size) fails (it may have
// written the part within). ReadAt and WriteAt may be called concurrently
// for disjoint ranges, as io.WriterAt allows. Nothing is guaranteed
// durable or visible to the VM until Flush or Close returns nil. It may
// implement ChangeReporter (changes since a token issued by a snapshot of
// this disk) so that a restore rewrites only what changed, and
// ExtentReporter (where the disk may hold data; it reads as zeros
// elsewhere) so that a restore neither reads nor compares the rest, and
// treats a disk that holds nothing as fresh: zero blocks stay holes.
type WritableDisk interface {
	io.ReaderAt
	io.WriterAt
	Size() int64
	Flush(ctx context.Context) error
	// Close flushes and releases the disk; an error means the disk's content
	// is undefined.
	Close() error
}

// Creator creates new VMs (rebuild).
type Creator interface {
	// CreateVM creates a stopped VM from spec with new, zero-filled disks
	// of the requested sizes, and returns it (as VM would) with its disks'
	// new ids in the order of spec.Disks and its NICs in the order of
	// spec.NICs, each connected or not as asked. Name, CPUs, MemoryB and
	// Firmware are as asked (an empty Firmware leaves the backend's
	// default). A name already in use may give ErrConflict.
	// The new disks are then written through DiskWriter.
	CreateVM(ctx context.Context, spec CreateSpec) (VM, error)
}

// CreateSpec describes a VM to create. It is usually a restore point's VM
// with overrides applied.
type CreateSpec struct {
	Name      string
	CPUs      int
	MemoryB   int64
	Firmware  string
	Placement Placement
	// Disks to create, zero-filled, in order; their IDs are ignored.
	Disks []DiskInfo
	// NICs to create. A NIC with Connected false is created disconnected.
	NICs []NIC
	// Raw is the source VM's own configuration (VM.Raw), if any; backends
	// may use it to reproduce details the neutral fields do not carry.
	Raw json.RawMessage
}
