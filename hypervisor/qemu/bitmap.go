package qemu

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/internal/nbd"
)

var io_EOF = io.EOF

// chain returns node's chain of bitmaps, oldest first. A chain that cannot
// be trusted — a bitmap inconsistent (QEMU was killed), not persistent, the
// last one not recording, an earlier one recording, a gap in the sequence
// — is removed, and an empty chain returned: the tokens that needed it
// were not honoured anyway, and the next snapshot starts afresh.
func (v *vm) chain(ctx context.Context, p *proc, node string) ([]parsed, error) {
	infos, err := p.bitmaps(ctx, node)
	if err != nil {
		return nil, err
	}
	var chain []parsed
	byName := map[string]bitmapInfo{}
	for _, b := range infos {
		if pb := parseBitmap(b.Name); pb.seq > 0 {
			chain = append(chain, pb)
			byName[b.Name] = b
		}
	}
	sort.Slice(chain, func(i, j int) bool { return chain[i].seq < chain[j].seq })
	why := ""
	for i, b := range chain {
		info := byName[b.name]
		last := i == len(chain)-1
		switch {
		case info.Inconsistent:
			why = "bitmap " + b.name + " is inconsistent (QEMU stopped uncleanly)"
		case !info.Persistent:
			why = "bitmap " + b.name + " is not persistent"
		case last && !info.Recording:
			why = "the newest bitmap " + b.name + " is not recording"
		case !last && info.Recording:
			why = "an older bitmap " + b.name + " is recording"
		case i > 0 && chain[i-1].seq+1 != b.seq:
			why = "the chain has a gap before " + b.name
		}
		if why != "" {
			break
		}
	}
	if why == "" {
		return chain, nil
	}
	v.h.log.Warn("qemu: change tracking restarts; earlier tokens are invalid", "vm", v.spec.Name, "node", node, "reason", why)
	for _, b := range chain {
		if err := p.qmp.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node, "name": b.name}, nil); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("remove untrusted bitmap %s: %w", b.name, err)
		}
	}
	return nil, nil
}

// prune removes the oldest bitmaps of node beyond Options.KeepBitmaps.
// Failures are logged: a bitmap left behind costs memory, not correctness.
func (v *vm) prune(ctx context.Context, p *proc, node string) {
	infos, err := p.bitmaps(ctx, node)
	if err != nil {
		return
	}
	var chain []parsed
	for _, b := range infos {
		if pb := parseBitmap(b.Name); pb.seq > 0 {
			chain = append(chain, pb)
		}
	}
	sort.Slice(chain, func(i, j int) bool { return chain[i].seq < chain[j].seq })
	for len(chain) > v.h.opts.KeepBitmaps {
		if err := p.qmp.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": node, "name": chain[0].name}, nil); err != nil {
			v.h.log.Warn("qemu: prune bitmap", "vm", v.spec.Name, "bitmap", chain[0].name, "err", err)
			return
		}
		chain = chain[1:]
	}
}

// changed merges bitmaps (consecutive links of ds.Node's chain) into a
// temporary bitmap, exports it on exportNode (which must reach ds.Node
// through its backing chain or be it) and reads it back with
// BLOCK_STATUS. A bitmap that is missing or inconsistent makes the token
// invalid. Call with v.mu held.
func (v *vm) changed(ctx context.Context, p *proc, ds DiskSpec, exportNode string, bitmaps []string, size int64) ([]hypervisor.Extent, error) {
	infos, err := p.bitmaps(ctx, ds.Node)
	if err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", ds.ID, err)
	}
	have := map[string]bitmapInfo{}
	for _, b := range infos {
		have[b.Name] = b
	}
	for i, name := range bitmaps {
		b, ok := have[name]
		if !ok || b.Inconsistent || (i > 0 && parseBitmap(bitmaps[i-1]).seq+1 != parseBitmap(name).seq) {
			return nil, fmt.Errorf("qemu: disk %q: bitmap %s is pruned or lost: %w", ds.ID, name, hypervisor.ErrTokenInvalid)
		}
	}
	tmp := v.h.uniq("vmbtmp")
	args := map[string]any{"node": ds.Node, "name": tmp, "persistent": false, "disabled": true, "granularity": Granularity}
	if err := p.qmp.Execute(ctx, "block-dirty-bitmap-add", args, nil); err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", ds.ID, err)
	}
	export := v.h.uniq("vmbchg")
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if err := p.delExport(cctx, export); err != nil {
			v.h.log.Warn("qemu: delete bitmap export", "export", export, "err", err)
		}
		if err := p.qmp.Execute(cctx, "block-dirty-bitmap-remove", map[string]any{"node": ds.Node, "name": tmp}, nil); err != nil && !isNotFound(err) {
			v.h.log.Warn("qemu: remove temporary bitmap", "bitmap", tmp, "err", err)
		}
	}()
	merge := map[string]any{"node": ds.Node, "target": tmp, "bitmaps": bitmaps}
	if err := p.qmp.Execute(ctx, "block-dirty-bitmap-merge", merge, nil); err != nil {
		return nil, fmt.Errorf("qemu: merge bitmaps of disk %q: %w", ds.ID, err)
	}
	sock, err := p.nbdServer(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu: changed extents of disk %q: %w", ds.ID, err)
	}
	if err := p.addExport(ctx, export, exportNode, false, []string{tmp}); err != nil {
		return nil, fmt.Errorf("qemu: export bitmap of disk %q: %w", ds.ID, err)
	}
	c, err := nbd.Dial(ctx, "unix", sock, nbd.Options{Export: export, MetaContexts: []string{nbd.DirtyBitmapContext(tmp)}})
	if err != nil {
		return nil, fmt.Errorf("qemu: read bitmap of disk %q: %w", ds.ID, err)
	}
	defer c.Close()
	ext, err := c.BlockStatus(ctx, nbd.DirtyBitmapContext(tmp), 0, size)
	if err != nil {
		return nil, fmt.Errorf("qemu: read bitmap of disk %q: %w", ds.ID, err)
	}
	var out []hypervisor.Extent
	for _, e := range ext {
		if e.Flags&nbd.StateDirty != 0 {
			out = appendExtent(out, e.Offset, e.Length)
		}
	}
	return out, nil
}
