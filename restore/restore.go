package restore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/pipeline"
	"github.com/vmbackup/vmbackup/repository"
)

// Sentinel errors.
var (
	// ErrVMRunning: InPlace was asked to write a VM that is not stopped,
	// without PowerOff. The error also wraps hypervisor.ErrConflict.
	ErrVMRunning = errors.New("restore: vm is not stopped")
	// ErrSizeMismatch: a target disk's size differs from the point's and
	// AllowSizeMismatch is not set.
	ErrSizeMismatch = errors.New("restore: disk size differs from the restore point's")
)

// Defaults for zero option values.
const (
	// DefaultShutdownTimeout is how long InPlace waits for a graceful
	// shutdown before cutting the power.
	DefaultShutdownTimeout = 2 * time.Minute
	// DefaultMaxInFlightBytes bounds a restore's chunk buffers.
	DefaultMaxInFlightBytes = 64 << 20
)

// DefaultWorkers is the number of chunks written at once when
// Options.Workers is zero.
func DefaultWorkers() int { return 2*runtime.GOMAXPROCS(0) + 2 }

// Methods, as reported in DiskResult.Method.
const (
	MethodChanged = "changed blocks"
	MethodCompare = "compare"
	MethodFresh   = "fresh disk"
)

// Options are common to InPlace and Rebuild. The zero value is usable.
type Options struct {
	// Workers is the number of chunks in flight at once; 0 means
	// DefaultWorkers().
	Workers int
	// MaxInFlightBytes bounds the chunk buffers' memory; 0 means
	// DefaultMaxInFlightBytes.
	MaxInFlightBytes int64
	// WriteLimiter, if not nil, limits the bytes written to the disks
	// (shared with other jobs by the caller).
	WriteLimiter *rate.Limiter
	// Progress, if not nil, is called about every percent of a disk
	// with the bytes of the point's disk handled so far (written or found
	// equal) and the disk's total; it may be called concurrently.
	Progress func(diskID string, done, total int64)
	// Logger receives debug logs; nil means slog.Default().
	Logger *slog.Logger
}

// InPlaceOptions configure InPlace.
type InPlaceOptions struct {
	Options
	// VMID is the VM to write; "" means the point's VM.
	VMID string
	// PowerOff lets InPlace stop a running VM: a graceful shutdown, then
	// a forced power off after ShutdownTimeout.
	PowerOff bool
	// ShutdownTimeout; 0 means DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Start starts the VM after its disks are written.
	Start bool
	// AllowSizeMismatch writes a disk whose size differs from the point's:
	// the first min(sizes) bytes are restored and the rest of a larger
	// target is left as it is.
	AllowSizeMismatch bool
	// TargetZeroed promises that the target's disks read as zeros (new,
	// empty disks made outside Rebuild, such as a fresh image file): they
	// are then written as a rebuild writes (MethodFresh: nothing is read
	// from them, zero blocks are not written). A wrong promise leaves old
	// data where the point has zeros.
	TargetZeroed bool
}

// RebuildOptions configure Rebuild. Zero fields keep the point's values.
type RebuildOptions struct {
	Options
	// Name of the new VM; "" means the point's VM name + "-restored".
	Name string
	// Placement of the new VM; the zero value keeps the point's.
	Placement hypervisor.Placement
	// NetworkMap maps the point's NIC networks to the target's; networks
	// not in the map are kept.
	NetworkMap map[string]string
	// CPUs and MemoryB override the point's when positive.
	CPUs    int
	MemoryB int64
	// DisconnectNICs creates every NIC disconnected, so the new VM cannot
	// clash with the original on the network.
	DisconnectNICs bool
	// KeepMACs keeps the NICs' MAC addresses; by default the hypervisor
	// assigns new ones.
	KeepMACs bool
	// PowerOn starts the new VM after its disks are written.
	PowerOn bool
}

// Result says what a restore did.
type Result struct {
	PointID string
	// VM is the target VM: the restored one, or the rebuilt one as
	// CreateVM returned it (set as soon as it exists, also on failure).
	VM       hypervisor.VM
	Disks    []DiskResult
	Duration time.Duration
	// BytesRead from the repository (plaintext), BytesWritten to disks.
	BytesRead    int64
	BytesWritten int64
	// Warnings are problems that did not fail the restore.
	Warnings []string
}

// DiskResult says what was done to one disk.
type DiskResult struct {
	ID       string // the disk's id in the restore point
	TargetID string // the disk written
	Size     int64  // the point's disk size
	Method   string // MethodChanged, MethodCompare or MethodFresh
	// Reason says why the method was chosen when it is MethodCompare, or
	// MethodFresh on a target found empty (not promised by TargetZeroed).
	Reason        string
	ChunksWritten int
	ChunksSkipped int // equal already, or zero on a fresh disk
	BytesRead     int64
	BytesWritten  int64
}

// PointVM decodes the VM configuration stored in a restore point.
func PointVM(m *repository.Manifest) (hypervisor.VM, error) {
	var vm hypervisor.VM
	if len(m.VM) == 0 {
		return vm, fmt.Errorf("restore point %s holds no vm configuration", m.ID)
	}
	if err := json.Unmarshal(m.VM, &vm); err != nil {
		return vm, fmt.Errorf("restore point %s: decode vm configuration: %w", m.ID, err)
	}
	return vm, nil
}

// InPlace writes every disk of point onto the VM it came from (or
// opts.VMID), writing only chunks that differ. The VM must be stopped
// unless opts.PowerOff. A target disk is found by the point's disk id;
// a missing disk is an error wrapping hypervisor.ErrNotFound.
func InPlace(ctx context.Context, hv hypervisor.Hypervisor, repo *repository.Repository, point *repository.Manifest, opts *InPlaceOptions) (*Result, error) {
	var o InPlaceOptions
	if opts != nil {
		o = *opts
	}
	if o.VMID == "" {
		o.VMID = point.VMID
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	start := time.Now()
	res := &Result{PointID: point.ID}
	fail := func(err error) (*Result, error) {
		res.Duration = time.Since(start)
		return res, fmt.Errorf("restore: in place of point %s onto vm %q: %w", point.ID, o.VMID, err)
	}
	dw, ok := hv.(hypervisor.DiskWriter)
	if !ok {
		return fail(fmt.Errorf("hypervisor cannot write disks: %w", hypervisor.ErrUnsupported))
	}
	vm, err := hv.VM(ctx, o.VMID)
	if err != nil {
		return fail(err)
	}
	res.VM = vm
	if vm.Power != hypervisor.PowerStopped {
		if !o.PowerOff {
			return fail(fmt.Errorf("it is %s: %w (%w)", vm.Power, ErrVMRunning, hypervisor.ErrConflict))
		}
		if err := stop(ctx, hv, o.VMID, o.ShutdownTimeout, logger(o.Logger)); err != nil {
			return fail(err)
		}
	}
	sizes := map[string]int64{}
	for _, d := range vm.Disks {
		sizes[d.ID] = d.Size
	}
	for _, d := range point.Disks {
		ts, ok := sizes[d.ID]
		if !ok {
			return fail(fmt.Errorf("disk %q: %w", d.ID, hypervisor.ErrNotFound))
		}
		if ts != d.Size && !o.AllowSizeMismatch {
			return fail(fmt.Errorf("disk %q: %d bytes, the point's %d: %w", d.ID, ts, d.Size, ErrSizeMismatch))
		}
	}
	r := newRunner(repo, o.Options)
	for i, d := range point.Disks {
		dr, err := r.restoreDisk(ctx, dw, o.VMID, point, d, d.ID, o.TargetZeroed)
		res.Disks = append(res.Disks, dr)
		res.BytesRead += dr.BytesRead
		res.BytesWritten += dr.BytesWritten
		if err != nil {
			return fail(fmt.Errorf("disk %q (%d of %d): %w; the vm's disks are incomplete", d.ID, i+1, len(point.Disks), err))
		}
	}
	if o.Start {
		if err := startVM(ctx, hv, o.VMID); err != nil {
			res.Warnings = append(res.Warnings, err.Error())
		}
	}
	if vm, err := hv.VM(ctx, o.VMID); err == nil {
		res.VM = vm
	}
	res.Duration = time.Since(start)
	return res, nil
}

// Rebuild creates a new VM from point's configuration with opts'
// overrides, writes its disks, and starts it if asked. The hypervisor must
// implement hypervisor.Creator and hypervisor.DiskWriter (else the error
// wraps hypervisor.ErrUnsupported).
func Rebuild(ctx context.Context, hv hypervisor.Hypervisor, repo *repository.Repository, point *repository.Manifest, opts *RebuildOptions) (*Result, error) {
	var o RebuildOptions
	if opts != nil {
		o = *opts
	}
	start := time.Now()
	res := &Result{PointID: point.ID}
	fail := func(err error) (*Result, error) {
		res.Duration = time.Since(start)
		return res, fmt.Errorf("restore: rebuild of point %s: %w", point.ID, err)
	}
	cr, ok := hv.(hypervisor.Creator)
	if !ok {
		return fail(fmt.Errorf("hypervisor cannot create vms: %w", hypervisor.ErrUnsupported))
	}
	dw, ok := hv.(hypervisor.DiskWriter)
	if !ok {
		return fail(fmt.Errorf("hypervisor cannot write disks: %w", hypervisor.ErrUnsupported))
	}
	src, err := PointVM(point)
	if err != nil {
		return fail(err)
	}
	spec := Spec(point, src, &o)
	vm, err := cr.CreateVM(ctx, spec)
	if err != nil {
		return fail(fmt.Errorf("create vm %q: %w", spec.Name, err))
	}
	res.VM = vm
	if len(vm.Disks) != len(point.Disks) {
		return fail(fmt.Errorf("created vm %q (%s) has %d disks, want %d", vm.Name, vm.ID, len(vm.Disks), len(point.Disks)))
	}
	r := newRunner(repo, o.Options)
	for i, d := range point.Disks {
		dr, err := r.restoreDisk(ctx, dw, vm.ID, point, d, vm.Disks[i].ID, true)
		res.Disks = append(res.Disks, dr)
		res.BytesRead += dr.BytesRead
		res.BytesWritten += dr.BytesWritten
		if err != nil {
			return fail(fmt.Errorf("created vm %q (%s) but writing disk %q (%d of %d) failed: %w; the new vm is incomplete", vm.Name, vm.ID, d.ID, i+1, len(point.Disks), err))
		}
	}
	if o.PowerOn {
		if err := startVM(ctx, hv, vm.ID); err != nil {
			res.Warnings = append(res.Warnings, err.Error())
		}
	}
	if v, err := hv.VM(ctx, vm.ID); err == nil {
		res.VM = v
	}
	res.Duration = time.Since(start)
	return res, nil
}

// Spec returns the CreateSpec that Rebuild asks for: the point's VM (src)
// with opts' overrides, and the point's disks in order.
func Spec(point *repository.Manifest, src hypervisor.VM, opts *RebuildOptions) hypervisor.CreateSpec {
	var o RebuildOptions
	if opts != nil {
		o = *opts
	}
	spec := hypervisor.CreateSpec{
		Name:      o.Name,
		CPUs:      src.CPUs,
		MemoryB:   src.MemoryB,
		Firmware:  src.Firmware,
		Placement: src.Placement,
		Raw:       src.Raw,
	}
	if spec.Name == "" {
		spec.Name = src.Name + "-restored"
	}
	if o.Placement != (hypervisor.Placement{}) {
		spec.Placement = o.Placement
	}
	if o.CPUs > 0 {
		spec.CPUs = o.CPUs
	}
	if o.MemoryB > 0 {
		spec.MemoryB = o.MemoryB
	}
	for _, d := range point.Disks {
		spec.Disks = append(spec.Disks, hypervisor.DiskInfo{Name: d.Name, Size: d.Size, Bus: d.Bus, BootOrder: d.BootOrder})
	}
	for _, n := range src.NICs {
		n.ID = ""
		if !o.KeepMACs {
			n.MAC = ""
		}
		if to, ok := o.NetworkMap[n.Network]; ok {
			n.Network = to
		}
		if o.DisconnectNICs {
			n.Connected = false
		}
		spec.NICs = append(spec.NICs, n)
	}
	return spec
}

func logger(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

// stop shuts the VM down gracefully, or cuts its power after timeout.
func stop(ctx context.Context, hv hypervisor.Hypervisor, vmID string, timeout time.Duration, log *slog.Logger) error {
	pc, ok := hv.(hypervisor.PowerController)
	if !ok {
		return fmt.Errorf("the vm is running and the hypervisor cannot stop it: %w", hypervisor.ErrUnsupported)
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	err := pc.Shutdown(sctx, vmID)
	cancel()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("shut down: %w", ctx.Err())
	}
	log.Warn("graceful shutdown failed, powering off", "vm", vmID, "err", err)
	if err := pc.PowerOff(ctx, vmID); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return nil
}

func startVM(ctx context.Context, hv hypervisor.Hypervisor, vmID string) error {
	pc, ok := hv.(hypervisor.PowerController)
	if !ok {
		return fmt.Errorf("start vm %q: %w", vmID, hypervisor.ErrUnsupported)
	}
	if err := pc.Start(ctx, vmID); err != nil {
		return fmt.Errorf("start vm %q: %w", vmID, err)
	}
	return nil
}

// runner restores disks with a bounded buffer pool.
type runner struct {
	repo    *repository.Repository
	o       Options
	pool    *pipeline.Pool
	workers int
}

func newRunner(repo *repository.Repository, o Options) *runner {
	cs := repo.Config().ChunkSize
	if o.MaxInFlightBytes <= 0 {
		o.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	workers := o.Workers
	if workers <= 0 {
		workers = DefaultWorkers()
	}
	o.Logger = logger(o.Logger)
	// A worker may hold two buffers, so the pool has room for at least two.
	pool := pipeline.NewPool(cs, max(int(o.MaxInFlightBytes/int64(cs)), 2))
	return &runner{repo: repo, o: o, pool: pool, workers: workers}
}

// restoreDisk writes disk d of point onto disk targetID of vmID.
func (r *runner) restoreDisk(ctx context.Context, dw hypervisor.DiskWriter, vmID string, point *repository.Manifest, d repository.DiskRecord, targetID string, fresh bool) (res DiskResult, err error) {
	res = DiskResult{ID: d.ID, TargetID: targetID, Size: d.Size}
	src, err := r.repo.OpenDisk(ctx, point, d.ID)
	if err != nil {
		return res, fmt.Errorf("open in repository: %w", err)
	}
	idx := src.Index()
	w, err := dw.OpenDiskForWrite(ctx, vmID, targetID)
	if err != nil {
		return res, fmt.Errorf("open for write: %w", err)
	}
	defer func() {
		if cerr := w.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close: %w", cerr)
		}
	}()
	cs := idx.ChunkSize()
	limit := min(w.Size(), d.Size)
	// A target that reports its allocated extents (an optional ability of
	// a WritableDisk) reads as zeros elsewhere: those parts are not read,
	// and a target that holds nothing at all is restored as a fresh disk.
	var alloc []hypervisor.Extent
	if er, ok := w.(hypervisor.ExtentReporter); ok && !fresh {
		if alloc, err = er.AllocatedExtents(ctx); err != nil {
			return res, fmt.Errorf("allocated extents: %w", err)
		}
		if alloc == nil {
			alloc = []hypervisor.Extent{} // nil would mean "all of it"
		}
		if len(pipeline.Within(nil, alloc, 0, limit)) == 0 {
			fresh = true
			res.Reason = "the target disk holds no data"
		}
	}

	var spans []pipeline.Span
	if fresh {
		res.Method = MethodFresh
		spans = pipeline.All(limit, cs)
	} else {
		res.Method, res.Reason, spans, err = changedSpans(ctx, w, d.ChangeToken, limit, cs)
		if err != nil {
			return res, err
		}
	}
	var total int64
	for _, sp := range spans {
		for i := sp.Lo; i < sp.Hi; i++ {
			off, end := pipeline.SlotRange(i, limit, cs)
			total += end - off
		}
	}
	meter := pipeline.NewMeter(total, func(done, total int64) {
		if r.o.Progress != nil {
			r.o.Progress(d.ID, done, total)
		}
	})
	var read, written atomic.Int64
	var nw, ns atomic.Int64
	cur := pipeline.NewCursor(spans)
	g, gctx := errgroup.WithContext(ctx)
	// Each worker holds its buffers for its life: one for the point's
	// chunk, and one for the target's current content unless it is fresh.
	perWorker := 2
	if fresh {
		perWorker = 1
	}
	workers := max(min(r.workers, pipeline.Count(spans), r.pool.Cap()/perWorker), 1)
	for range workers {
		g.Go(func() error {
			buf, err := r.pool.Get(gctx)
			if err != nil {
				return err
			}
			defer r.pool.Put(buf)
			var old []byte
			if !fresh {
				if old, err = r.pool.Get(gctx); err != nil {
					return err
				}
				defer r.pool.Put(old)
			}
			var scratch []hypervisor.Extent
			for {
				i, ok := cur.Next()
				if !ok {
					return nil
				}
				off, end := pipeline.SlotRange(i, limit, cs)
				wn, rd, err := r.restoreChunk(gctx, src, w, alloc, &scratch, idx.Get(i), i, off, end, fresh, buf, old)
				if err != nil {
					return fmt.Errorf("chunk at %d (%s): %w", off, idx.Get(i), err)
				}
				read.Add(rd)
				if wn > 0 {
					nw.Add(1)
					written.Add(wn)
				} else {
					ns.Add(1)
				}
				meter.Add(end - off)
			}
		})
	}
	err = g.Wait()
	res.BytesRead, res.BytesWritten = read.Load(), written.Load()
	res.ChunksWritten, res.ChunksSkipped = int(nw.Load()), int(ns.Load())
	if err != nil {
		return res, err
	}
	if err := w.Flush(ctx); err != nil {
		return res, fmt.Errorf("flush: %w", err)
	}
	r.o.Logger.Debug("disk restored", "point", point.ID, "disk", d.ID, "vm", vmID, "target", targetID, "method", res.Method,
		"written", res.BytesWritten, "chunks_written", res.ChunksWritten, "chunks_skipped", res.ChunksSkipped)
	return res, nil
}

// changedSpans returns the slots of a disk opened for writing that may
// differ from the content named by token, and the method: MethodChanged
// if the disk reports changes since token, else MethodCompare (all slots)
// with the reason.
func changedSpans(ctx context.Context, w hypervisor.WritableDisk, token string, limit int64, cs int) (method, reason string, spans []pipeline.Span, err error) {
	cr, ok := w.(hypervisor.ChangeReporter)
	switch {
	case !ok:
		reason = "the disk does not report changes"
	case token == "":
		reason = "the restore point has no change token"
	default:
		changed, err := cr.ChangedExtents(ctx, token)
		if err == nil {
			return MethodChanged, "", pipeline.Touched(changed, limit, cs), nil
		}
		if !errors.Is(err, hypervisor.ErrTokenInvalid) {
			return "", "", nil, fmt.Errorf("changed extents: %w", err)
		}
		reason = "token invalid: " + err.Error()
	}
	return MethodCompare, reason, pipeline.All(limit, cs), nil
}

// writeGrain is the unit in which a restore compares what it writes with
// what the target holds: runs of differing 64 KiB blocks are written, the
// rest of a chunk is not, so a chunk that differs in one block costs one
// small write, and zero blocks of a fresh disk stay holes.
const writeGrain = 64 << 10

// restoreChunk makes [off, end) of w hold slot i's content (id), using
// buf (and, unless the disk is fresh, cur and scratch) as scratch. alloc,
// if not nil, is where the target may hold data. It returns the bytes
// written to w and read from the repository.
func (r *runner) restoreChunk(ctx context.Context, src *repository.DiskReader, w hypervisor.WritableDisk, alloc []hypervisor.Extent, scratch *[]hypervisor.Extent, id repository.ChunkID, i int, off, end int64, fresh bool, buf, cur []byte) (written, rd int64, err error) {
	if fresh && id.IsZero() {
		return 0, 0, nil
	}
	n := int(end - off)
	var held []hypervisor.Extent
	if !fresh {
		// Where the target holds nothing, the chunk is written as onto a
		// fresh disk: no read, no compare.
		held = pipeline.Within((*scratch)[:0], alloc, off, end)
		*scratch = held
		if len(held) == 0 {
			if fresh = true; id.IsZero() {
				return 0, 0, nil
			}
		}
	}
	if !fresh {
		// Look at what the target holds: nothing to do if equal already.
		cur = cur[:n]
		pos := off
		for _, e := range held {
			clear(cur[pos-off : e.Offset-off])
			if err := pipeline.ReadFull(w, cur[e.Offset-off:e.End()-off], e.Offset); err != nil {
				return 0, 0, fmt.Errorf("read target: %w", err)
			}
			pos = e.End()
		}
		clear(cur[pos-off:])
		if id.IsZero() {
			if pipeline.IsZero(cur) {
				return 0, 0, nil
			}
			clear(buf[:n])
			written, err = r.writeDiff(ctx, w, buf[:n], cur, off)
			return written, 0, err
		}
		// A zero target differs from a non-zero chunk: no need to hash.
		if !pipeline.IsZero(cur) && r.repo.HashChunk(cur) == id {
			return 0, 0, nil
		}
	}
	data, err := src.ReadChunk(ctx, i, buf[:0])
	if err != nil {
		return 0, 0, fmt.Errorf("read from repository: %w", err)
	}
	rd = int64(len(data))
	if len(data) < n {
		return 0, rd, fmt.Errorf("repository chunk has %d bytes, want at least %d", len(data), n)
	}
	if !fresh {
		written, err = r.writeDiff(ctx, w, data[:n], cur, off)
	} else {
		written, err = r.writeDiff(ctx, w, data[:n], nil, off)
	}
	return written, rd, err
}

// writeDiff writes the runs of writeGrain blocks of p (for offset off)
// that differ from cur; a nil cur stands for zeros (a fresh disk).
func (r *runner) writeDiff(ctx context.Context, w hypervisor.WritableDisk, p, cur []byte, off int64) (int64, error) {
	var written int64
	start := -1 // start of the current run of differing blocks
	flush := func(end int) error {
		if start < 0 {
			return nil
		}
		err := r.write(ctx, w, p[start:end], off+int64(start))
		written += int64(end - start)
		start = -1
		return err
	}
	for g := 0; g < len(p); g += writeGrain {
		e := min(g+writeGrain, len(p))
		var differs bool
		if cur == nil {
			differs = !pipeline.IsZero(p[g:e])
		} else {
			differs = !bytes.Equal(p[g:e], cur[g:e])
		}
		switch {
		case differs && start < 0:
			start = g
		case !differs:
			if err := flush(g); err != nil {
				return written, err
			}
		}
	}
	return written, flush(len(p))
}

func (r *runner) write(ctx context.Context, w hypervisor.WritableDisk, p []byte, off int64) error {
	if lim := r.o.WriteLimiter; lim != nil {
		for n := len(p); n > 0; {
			k := min(n, lim.Burst())
			if err := lim.WaitN(ctx, k); err != nil {
				return err
			}
			n -= k
		}
	}
	if _, err := w.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}
