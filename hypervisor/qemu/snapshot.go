package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/nbd"
	"github.com/vmbackup/vmbackup/internal/qmp"
)

var execCommand = exec.CommandContext

// cleanupTimeout bounds each teardown step, which runs without the
// caller's context.
const cleanupTimeout = 30 * time.Second

// snapshot is a held fleecing snapshot.
type snapshot struct {
	v     *vm
	p     *proc
	info  hypervisor.SnapshotInfo
	disks []*snapDisk

	mu       sync.Mutex
	released bool
	open     []*nbd.Conn
}

// snapDisk is one disk's fleecing state.
type snapDisk struct {
	spec    DiskSpec
	size    int64
	fleece  string   // fleecing node
	file    string   // its temporary qcow2 file
	job     string   // backup job id
	export  string   // NBD export name
	chain   []string // bitmaps up to and including this snapshot's own
	created bool     // fleece node added
}

// Snapshot takes a crash-consistent (or, with a guest agent,
// application-consistent) snapshot of all the VM's disks by fleecing; see
// the package doc.
func (h *Hypervisor) Snapshot(ctx context.Context, vmID string, opts hypervisor.SnapshotOptions) (hypervisor.Snapshot, error) {
	v, err := h.lookup(vmID)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: snapshot %q: %w", vmID, err)
	}
	cons := opts.Consistency
	if cons == "" {
		cons = hypervisor.CrashConsistent
	}
	if cons != hypervisor.CrashConsistent && cons != hypervisor.ApplicationConsistent {
		return nil, fmt.Errorf("qemu: snapshot %q: consistency %q: %w", vmID, cons, hypervisor.ErrUnsupported)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return nil, fmt.Errorf("qemu: snapshot %q: %w", vmID, err)
	}
	defer v.mu.Unlock()

	note := ""
	freeze := false
	if cons == hypervisor.ApplicationConsistent {
		why := ""
		switch {
		case !v.running():
			why = "the VM is not running"
		case v.spec.AgentSocket == "":
			why = "no guest agent socket is configured"
		}
		if why != "" {
			if !opts.AllowCrashFallback {
				return nil, fmt.Errorf("qemu: snapshot %q: cannot quiesce: %s: %w", vmID, why, hypervisor.ErrUnsupported)
			}
			cons, note = hypervisor.CrashConsistent, "crash-consistent: "+why
		} else {
			freeze = true
		}
	}

	var p *proc
	offline := false
	if v.running() {
		p = v.run
	} else {
		if p, err = v.acquireOffline(ctx); err != nil {
			return nil, fmt.Errorf("qemu: snapshot %q: %w", vmID, err)
		}
		offline = true
	}
	s := &snapshot{v: v, p: p}
	s.info = hypervisor.SnapshotInfo{ID: h.uniq("snap-" + safeName(vmID) + "-"), VM: v.describeLocked(), Consistency: cons, Note: note}
	if err := s.take(ctx, freeze, opts.AllowCrashFallback); err != nil {
		s.teardown()
		if offline {
			v.releaseOffline()
		}
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("qemu: snapshot %q: %w", vmID, err)
	}
	v.snaps[s.info.ID] = s
	return s, nil
}

// take sets up fleecing for every disk in one transaction.
func (s *snapshot) take(ctx context.Context, freeze, fallback bool) error {
	h, p := s.v.h, s.p
	var actions []map[string]any
	for i, ds := range p.disks {
		d := &snapDisk{spec: ds, size: s.v.sizes[i]}
		s.disks = append(s.disks, d)
		base := h.uniq("f")
		d.fleece, d.job, d.export = "vmb"+base, "vmbjob"+base, "vmbexp"+base
		d.file = h.runPath(base + ".qcow2")
		if err := h.qemuImg(ctx, "create", "-q", "-f", "qcow2", d.file, strconv.FormatInt(d.size, 10)); err != nil {
			return err
		}
		add := map[string]any{
			"driver": "qcow2", "node-name": d.fleece,
			"file":    map[string]any{"driver": "file", "filename": d.file},
			"backing": ds.Node,
		}
		if err := p.qmp.Execute(ctx, "blockdev-add", add, nil); err != nil {
			return fmt.Errorf("add fleecing node for disk %q: %w", ds.ID, err)
		}
		d.created = true
		chain, err := s.v.chain(ctx, p, ds.Node)
		if err != nil {
			return fmt.Errorf("disk %q: %w", ds.ID, err)
		}
		next := 1
		if len(chain) > 0 {
			next = chain[len(chain)-1].seq + 1
		}
		name := fmt.Sprintf("vmb-%d-%s", next, nonce())
		for _, b := range chain {
			d.chain = append(d.chain, b.name)
		}
		d.chain = append(d.chain, name)
		actions = append(actions, map[string]any{"type": "block-dirty-bitmap-add", "data": map[string]any{
			"node": ds.Node, "name": name, "persistent": true, "granularity": Granularity,
		}})
		if len(chain) > 0 {
			actions = append(actions, map[string]any{"type": "block-dirty-bitmap-disable", "data": map[string]any{
				"node": ds.Node, "name": chain[len(chain)-1].name,
			}})
		}
		actions = append(actions, map[string]any{"type": "blockdev-backup", "data": map[string]any{
			"device": ds.Node, "target": d.fleece, "sync": "none", "job-id": d.job,
			"filter-node-name": "vmbcbw" + base, "auto-dismiss": true,
		}})
	}
	var thaw func()
	if freeze {
		var err error
		thaw, err = s.freeze(ctx)
		if err != nil {
			thaw = nil
			if !fallback {
				return fmt.Errorf("freeze guest file systems: %w: %w", hypervisor.ErrUnsupported, err)
			}
			s.info.Consistency = hypervisor.CrashConsistent
			s.info.Note = "crash-consistent: guest agent: " + err.Error()
		}
	}
	// The transaction is the snapshot's instant: thaw right after it,
	// whatever its outcome.
	err := p.qmp.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil)
	if thaw != nil {
		thaw()
	}
	if err != nil {
		return fmt.Errorf("start fleecing: %w", err)
	}
	if _, err := p.nbdServer(ctx); err != nil {
		return fmt.Errorf("start NBD server: %w", err)
	}
	for _, d := range s.disks {
		if err := p.addExport(ctx, d.export, d.fleece, false, nil); err != nil {
			return fmt.Errorf("export disk %q: %w", d.spec.ID, err)
		}
	}
	for _, d := range s.disks {
		s.v.prune(ctx, p, d.spec.Node)
	}
	return nil
}

// freeze freezes the guest's file systems through the guest agent and
// returns the function that thaws them.
func (s *snapshot) freeze(ctx context.Context) (func(), error) {
	c, err := qmp.DialAgent(ctx, s.v.spec.AgentSocket)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	id := time.Now().UnixNano() & 0x7fffffff
	var got int64
	if err := c.Execute(sctx, "guest-sync", map[string]any{"id": id}, &got); err != nil || got != id {
		c.Close()
		return nil, fmt.Errorf("guest agent not responding: %v", err)
	}
	if err := c.Execute(ctx, "guest-fsfreeze-freeze", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return func() {
		tctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := c.Execute(tctx, "guest-fsfreeze-thaw", nil, nil); err != nil {
			s.v.h.log.Error("qemu: thaw guest file systems", "vm", s.v.spec.Name, "err", err)
		}
		c.Close()
	}, nil
}

// teardown undoes whatever take did, in order, ignoring what is missing.
// Call with v.mu held.
func (s *snapshot) teardown() {
	s.mu.Lock()
	conns := s.open
	s.open = nil
	s.released = true
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	alive := s.p.alive()
	for _, d := range s.disks {
		if alive {
			ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
			if err := s.p.delExport(ctx, d.export); err != nil {
				s.v.h.log.Warn("qemu: delete snapshot export", "export", d.export, "err", err)
			}
			if err := s.p.cancelJob(ctx, d.job); err != nil {
				s.v.h.log.Warn("qemu: cancel fleecing job", "job", d.job, "err", err)
			}
			if d.created {
				if err := s.p.blockdevDel(ctx, d.fleece); err != nil {
					s.v.h.log.Warn("qemu: delete fleecing node", "node", d.fleece, "err", err)
				}
			}
			cancel()
		}
		os.Remove(d.file)
	}
}

func (s *snapshot) Info() hypervisor.SnapshotInfo { return s.info }

// Release tears the fleecing down (export, job, node, file) and, for a
// stopped VM, lets the storage daemon go. It waits for QEMU's events
// without ctx, so that it releases even when ctx is cancelled.
func (s *snapshot) Release(ctx context.Context) error {
	v := s.v
	v.mu.Lock()
	defer v.mu.Unlock()
	s.mu.Lock()
	done := s.released
	s.mu.Unlock()
	if done {
		return nil
	}
	s.teardown()
	delete(v.snaps, s.info.ID)
	if s.p == v.offline {
		v.releaseOffline()
	}
	return nil
}

// OpenDisk connects to the disk's export.
func (s *snapshot) OpenDisk(ctx context.Context, diskID string) (hypervisor.Disk, error) {
	var d *snapDisk
	for _, x := range s.disks {
		if x.spec.ID == diskID {
			d = x
		}
	}
	if d == nil {
		return nil, fmt.Errorf("qemu: snapshot %s: disk %q: %w", s.info.ID, diskID, hypervisor.ErrNotFound)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: open disk %q: %w", diskID, err)
	}
	s.mu.Lock()
	gone := s.released
	s.mu.Unlock()
	if gone {
		return nil, fmt.Errorf("qemu: open disk %q: snapshot %s was released", diskID, s.info.ID)
	}
	c, err := nbd.Dial(ctx, "unix", s.p.nbdSock, nbd.Options{Export: d.export, MetaContexts: []string{nbd.ContextAllocation}, Timeout: s.v.h.opts.IOTimeout})
	if err != nil {
		return nil, fmt.Errorf("qemu: open disk %q: %w", diskID, err)
	}
	if c.Size() != d.size {
		c.Close()
		return nil, fmt.Errorf("qemu: open disk %q: export size %d, want %d", diskID, c.Size(), d.size)
	}
	s.mu.Lock()
	if s.released {
		s.mu.Unlock()
		c.Close()
		return nil, fmt.Errorf("qemu: open disk %q: snapshot %s was released", diskID, s.info.ID)
	}
	s.open = append(s.open, c)
	s.mu.Unlock()
	return &disk{s: s, d: d, c: c}, nil
}

// disk is a snapshot's disk read over NBD.
type disk struct {
	s *snapshot
	d *snapDisk
	c *nbd.Conn
}

func (k *disk) ReadAt(p []byte, off int64) (int, error) {
	n, err := k.c.ReadAt(p, off)
	if err != nil && err != io_EOF {
		return n, fmt.Errorf("qemu: read disk %q at %d: %w", k.d.spec.ID, off, err)
	}
	return n, err
}

func (k *disk) Size() int64 { return k.d.size }

func (k *disk) Close() error { return k.c.Close() }

// AllocatedExtents reports the ranges that do not read as zeros
// (base:allocation, through the backing chain).
func (k *disk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	return allocated(ctx, k.c, k.d.spec.ID, k.d.size)
}

// allocated returns the ranges of an export (negotiated with
// nbd.ContextAllocation) that the server does not promise to read as
// zeros.
func allocated(ctx context.Context, c *nbd.Conn, diskID string, size int64) ([]hypervisor.Extent, error) {
	ext, err := c.BlockStatus(ctx, nbd.ContextAllocation, 0, size)
	if err != nil {
		return nil, fmt.Errorf("qemu: allocation of disk %q: %w", diskID, err)
	}
	var out []hypervisor.Extent
	for _, e := range ext {
		if e.Flags&nbd.StateZero == 0 {
			out = appendExtent(out, e.Offset, e.Length)
		}
	}
	return out, nil
}

// ChangeToken names this snapshot's state: its own bitmap.
func (k *disk) ChangeToken() string { return k.d.chain[len(k.d.chain)-1] }

// ChangedExtents merges the bitmaps from token's to this snapshot's.
func (k *disk) ChangedExtents(ctx context.Context, token string) ([]hypervisor.Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", k.d.spec.ID, err)
	}
	chain := k.d.chain
	i := indexOf(chain, token)
	if i < 0 || parseBitmap(token).seq == 0 {
		return nil, fmt.Errorf("qemu: disk %q: token %q: %w", k.d.spec.ID, abbrev(token), hypervisor.ErrTokenInvalid)
	}
	// The bitmaps token..own-1 hold the writes between token's snapshot
	// and this one; this snapshot's own bitmap records later writes.
	need := chain[i : len(chain)-1]
	if len(need) == 0 {
		return nil, nil
	}
	if err := k.s.v.mu.LockContext(ctx); err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", k.d.spec.ID, err)
	}
	defer k.s.v.mu.Unlock()
	k.s.mu.Lock()
	gone := k.s.released
	k.s.mu.Unlock()
	if gone || !k.s.p.alive() {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: snapshot %s was released", k.d.spec.ID, k.s.info.ID)
	}
	return k.s.v.changed(ctx, k.s.p, k.d.spec, k.d.fleece, need, k.d.size)
}

func abbrev(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func indexOf(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

func appendExtent(out []hypervisor.Extent, off, n int64) []hypervisor.Extent {
	if k := len(out); k > 0 && out[k-1].End() == off {
		out[k-1].Length += n
		return out
	}
	return append(out, hypervisor.Extent{Offset: off, Length: n})
}

// parsed is a chain bitmap's name split up.
type parsed struct {
	name string
	seq  int
}

// parseBitmap parses "vmb-SEQ-NONCE" (NONCE: 8 hex digits); seq is 0 for
// anything else.
func parseBitmap(name string) parsed {
	rest, ok := strings.CutPrefix(name, "vmb-")
	if !ok {
		return parsed{}
	}
	seqS, n, ok := strings.Cut(rest, "-")
	if !ok || len(n) != 8 || strings.Trim(n, "0123456789abcdef") != "" {
		return parsed{}
	}
	seq, err := strconv.Atoi(seqS)
	if err != nil || seq <= 0 || strconv.Itoa(seq) != seqS {
		return parsed{}
	}
	return parsed{name: name, seq: seq}
}
