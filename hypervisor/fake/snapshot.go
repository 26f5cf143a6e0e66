package fake

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// errReleased is returned by reads of a released snapshot's disks.
var errReleased = errors.New("fake: snapshot released")

// errClosed is returned by a closed Disk or WritableDisk.
var errClosed = errors.New("fake: disk closed")

// Snapshot implements hypervisor.Hypervisor. All disks of the VM are
// captured at one instant: no write to any of them falls between two of
// them.
func (h *Hypervisor) Snapshot(ctx context.Context, vmID string, opts hypervisor.SnapshotOptions) (hypervisor.Snapshot, error) {
	if err := h.begin(ctx, OpSnapshot, vmID, ""); err != nil {
		return nil, err
	}
	h.mu.Lock()
	v, _, err := h.lookup("snapshot", vmID, "")
	if err != nil {
		h.mu.Unlock()
		return nil, err
	}
	info := hypervisor.SnapshotInfo{VM: copyVM(v.desc), Consistency: hypervisor.CrashConsistent}
	switch opts.Consistency {
	case "", hypervisor.CrashConsistent:
	case hypervisor.ApplicationConsistent:
		why := ""
		switch {
		case !h.opts.Quiesce:
			why = "the guest cannot be quiesced (fake.Options.Quiesce is false)"
		case v.desc.Power != hypervisor.PowerRunning:
			why = fmt.Sprintf("the guest cannot be quiesced: the vm is %s", v.desc.Power)
		}
		switch {
		case why == "":
			info.Consistency = hypervisor.ApplicationConsistent
		case opts.AllowCrashFallback:
			info.Note = "crash-consistent: " + why
		default:
			h.mu.Unlock()
			return nil, fmt.Errorf("fake: snapshot vm %q: application consistency: %s: %w", vmID, why, hypervisor.ErrUnsupported)
		}
	default:
		h.mu.Unlock()
		return nil, fmt.Errorf("fake: snapshot vm %q: consistency %q: %w", vmID, opts.Consistency, hypervisor.ErrUnsupported)
	}
	disks := slices.Clone(v.disks)
	h.snaps++
	info.ID = "snap-" + strconv.Itoa(h.snaps)
	h.open++
	h.mu.Unlock()

	s := &snapshot{h: h, info: info, disks: map[string]*frozenDisk{}}
	// Lock every disk, then freeze them all: one instant for the VM.
	for _, d := range disks {
		d.mu.Lock()
	}
	for _, d := range disks {
		fd := &frozenDisk{s: s, d: d, vmID: vmID, view: d.st.freeze(), epoch: d.epoch, gen: d.gen}
		if d.dirty != nil {
			fd.dirty = maps.Clone(d.dirty)
		}
		d.gen++
		s.disks[d.id] = fd
	}
	for _, d := range disks {
		d.mu.Unlock()
	}
	h.stats.snapshots.Add(1)
	return s, nil
}

// snapshot is a hypervisor.Snapshot of the fake.
type snapshot struct {
	h        *Hypervisor
	info     hypervisor.SnapshotInfo
	disks    map[string]*frozenDisk // immutable
	mu       sync.Mutex             // serializes Release
	released atomic.Bool
}

// frozenDisk is one disk of a snapshot.
type frozenDisk struct {
	s     *snapshot
	d     *disk
	vmID  string
	view  view
	epoch uint64
	gen   uint64           // the snapshot's generation: its writes are stamped <= gen
	dirty map[int64]uint64 // copy of the disk's stamps at the snapshot; nil without tracking
}

func (s *snapshot) Info() hypervisor.SnapshotInfo {
	i := s.info
	i.VM = copyVM(i.VM)
	return i
}

func (s *snapshot) OpenDisk(ctx context.Context, diskID string) (hypervisor.Disk, error) {
	if err := s.h.begin(ctx, OpOpenDisk, s.info.VM.ID, diskID); err != nil {
		return nil, err
	}
	if s.released.Load() {
		return nil, fmt.Errorf("fake: open disk %q of snapshot %s: %w", diskID, s.info.ID, errReleased)
	}
	fd := s.disks[diskID]
	if fd == nil {
		return nil, fmt.Errorf("fake: open disk %q of snapshot %s: %w", diskID, s.info.ID, hypervisor.ErrNotFound)
	}
	sd := &snapDisk{fd: fd}
	o := s.h.opts
	switch {
	case o.NoExtents && o.NoChangeTracking:
		return sd, nil
	case o.NoChangeTracking:
		return extDisk{sd}, nil
	case o.NoExtents:
		return cbtDisk{sd}, nil
	default:
		return extCBTDisk{sd}, nil
	}
}

// Release implements hypervisor.Snapshot. It ignores ctx's cancellation
// (a fault's Delay still ends with ctx). A Release failed by an injected
// fault leaves the snapshot open, so a retry can release it.
func (s *snapshot) Release(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.released.Load() {
		return nil
	}
	if err := s.h.hit(ctx, OpRelease, s.info.VM.ID, ""); err != nil {
		return err
	}
	s.released.Store(true)
	for _, fd := range s.disks {
		fd.view.release()
	}
	s.h.mu.Lock()
	s.h.open--
	s.h.mu.Unlock()
	return nil
}

// snapDisk is an opened disk of a snapshot. The types below add the
// optional interfaces the Options ask for.
type snapDisk struct {
	fd     *frozenDisk
	closed atomic.Bool
}

type (
	extDisk    struct{ *snapDisk }
	cbtDisk    struct{ *snapDisk }
	extCBTDisk struct{ *snapDisk }
)

var (
	_ hypervisor.ExtentReporter = extDisk{}
	_ hypervisor.ChangeTracker  = cbtDisk{}
	_ hypervisor.ExtentReporter = extCBTDisk{}
	_ hypervisor.ChangeTracker  = extCBTDisk{}
)

func (d extDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return d.allocatedExtents(ctx)
}

func (d cbtDisk) ChangedExtents(ctx context.Context, token string) ([]hypervisor.Extent, error) {
	return d.changedExtents(ctx, token)
}

func (d cbtDisk) ChangeToken() string { return d.changeToken() }

func (d extCBTDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return d.allocatedExtents(ctx)
}

func (d extCBTDisk) ChangedExtents(ctx context.Context, token string) ([]hypervisor.Extent, error) {
	return d.changedExtents(ctx, token)
}

func (d extCBTDisk) ChangeToken() string { return d.changeToken() }

func (d *snapDisk) Size() int64 { return d.fd.d.size }

func (d *snapDisk) Close() error {
	d.closed.Store(true)
	return nil
}

func (d *snapDisk) usable() error {
	switch {
	case d.closed.Load():
		return errClosed
	case d.fd.s.released.Load():
		return errReleased
	}
	return nil
}

// ReadAt implements io.ReaderAt.
func (d *snapDisk) ReadAt(p []byte, off int64) (int, error) {
	fd := d.fd
	if err := d.usable(); err != nil {
		return 0, fmt.Errorf("fake: read disk %q of snapshot %s: %w", fd.d.id, fd.s.info.ID, err)
	}
	if err := fd.s.h.hit(context.Background(), OpRead, fd.vmID, fd.d.id); err != nil {
		return 0, err
	}
	n, err := readAtSize(p, off, fd.d.size, fd.view.readAt)
	if n > 0 {
		st := &fd.s.h.stats
		st.reads.Add(1)
		st.bytesRead.Add(int64(n))
	}
	return n, err
}

// readAtSize implements io.ReaderAt's rules for a disk of the given size
// on top of read, which reads a range within the disk.
func readAtSize(p []byte, off, size int64, read func(p []byte, off int64) error) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fake: read at negative offset %d", off)
	}
	if off >= size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), size-off))
	if err := read(p[:n], off); err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *snapDisk) allocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	fd := d.fd
	if err := fd.s.h.begin(ctx, OpAllocatedExtents, fd.vmID, fd.d.id); err != nil {
		return nil, err
	}
	if err := d.usable(); err != nil {
		return nil, fmt.Errorf("fake: allocated extents of disk %q: %w", fd.d.id, err)
	}
	ext, err := fd.view.extents()
	if err != nil {
		return nil, fmt.Errorf("fake: allocated extents of disk %q: %w", fd.d.id, err)
	}
	return ext, nil
}

func (d *snapDisk) changeToken() string {
	fd := d.fd
	if fd.dirty == nil {
		return "" // tracking was off at the snapshot
	}
	return fd.s.h.encodeToken(token{VM: fd.vmID, Disk: fd.d.id, Epoch: fd.epoch, Gen: fd.gen})
}

func (d *snapDisk) changedExtents(ctx context.Context, tok string) ([]hypervisor.Extent, error) {
	fd := d.fd
	h := fd.s.h
	if err := h.begin(ctx, OpChangedExtents, fd.vmID, fd.d.id); err != nil {
		return nil, err
	}
	if err := d.usable(); err != nil {
		return nil, fmt.Errorf("fake: changed extents of disk %q: %w", fd.d.id, err)
	}
	t, err := h.decodeToken(tok, fd.vmID, fd.d.id)
	if err == nil {
		fd.d.mu.RLock()
		current := fd.d.epoch
		fd.d.mu.RUnlock()
		switch {
		case fd.dirty == nil:
			err = errors.New("change tracking was off at this snapshot")
		case t.Epoch != fd.epoch || fd.epoch != current:
			err = errors.New("change tracking was reset since the token was issued")
		case t.Gen > fd.gen:
			err = errors.New("the token was issued after this snapshot")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fake: changed extents of disk %q of snapshot %s: %w: %w", fd.d.id, fd.s.info.ID, hypervisor.ErrTokenInvalid, err)
	}
	return changed(fd.dirty, t.Gen, h.opts.Granularity, fd.d.size), nil
}

// changed returns the chunks of granularity g stamped after gen, as sorted,
// merged extents within size.
func changed(dirty map[int64]uint64, gen uint64, g, size int64) []hypervisor.Extent {
	var chunks []int64
	for c, stamp := range dirty {
		if stamp > gen {
			chunks = append(chunks, c)
		}
	}
	slices.Sort(chunks)
	var out []hypervisor.Extent
	for _, c := range chunks {
		off := c * g
		n := min(g, size-off)
		if k := len(out); k > 0 && out[k-1].End() == off {
			out[k-1].Length += n
			continue
		}
		out = append(out, hypervisor.Extent{Offset: off, Length: n})
	}
	return out
}

// token is what a change token encodes.
type token struct {
	Instance string `json:"i"`
	VM       string `json:"v"`
	Disk     string `json:"d"`
	Epoch    uint64 `json:"e"`
	Gen      uint64 `json:"g"`
}

const tokenPrefix = "fakecbt1."

func (h *Hypervisor) encodeToken(t token) string {
	t.Instance = h.instance
	b, err := json.Marshal(t)
	if err != nil {
		panic(err) // cannot happen for strings and integers
	}
	return tokenPrefix + base64.RawURLEncoding.EncodeToString(b)
}

// decodeToken parses tok and checks that this fake issued it for the disk.
func (h *Hypervisor) decodeToken(tok, vmID, diskID string) (token, error) {
	var t token
	rest, ok := strings.CutPrefix(tok, tokenPrefix)
	if !ok {
		return t, errors.New("not a token of the fake")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return t, errors.New("malformed token")
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return t, errors.New("malformed token")
	}
	switch {
	case t.Instance != h.instance:
		return t, errors.New("the token was issued by another fake hypervisor")
	case h.encodeToken(t) != tok:
		return t, errors.New("malformed token")
	case t.VM != vmID || t.Disk != diskID:
		return t, fmt.Errorf("the token belongs to disk %q of vm %q", t.Disk, t.VM)
	}
	return t, nil
}
