package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/internal/qmp"
)

// proc is a QEMU process the backend talks to over QMP: a VM's
// qemu-system (started or attached) or a qemu-storage-daemon serving a
// stopped VM's images.
type proc struct {
	h      *Hypervisor
	name   string // for messages
	cmd    *exec.Cmd
	qmp    *qmp.Client
	exited chan struct{} // closed when the started process has exited
	stderr *syncBuffer
	// disks are the VM's disks with the node names they have in this
	// process (a storage daemon names them itself).
	disks   []DiskSpec
	nbdOnce sync.Mutex
	nbdSock string // set once the NBD server runs
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 64<<10 {
		return len(p), nil
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.TrimSpace(s.b.String())
}

// blockdevArgs returns the -blockdev JSON values for disks: a qcow2 format
// node on a file node, and a raw guest node on top.
func blockdevArgs(disks []DiskSpec, flag string) []string {
	var args []string
	for _, d := range disks {
		fmtNode, _ := json.Marshal(map[string]any{
			"driver": "qcow2", "node-name": d.Node,
			"file": map[string]any{"driver": "file", "filename": d.Image},
		})
		guest, _ := json.Marshal(map[string]any{"driver": "raw", "node-name": d.GuestNode, "file": d.Node})
		args = append(args, flag, string(fmtNode), flag, string(guest))
	}
	return args
}

// startProc starts bin with args plus a QMP socket and connects to it.
func (h *Hypervisor) startProc(ctx context.Context, name, bin string, args []string, daemon bool, disks []DiskSpec) (*proc, error) {
	sock := h.runPath(h.uniq("qmp") + ".sock")
	chardev := "socket,id=vmbqmp,path=" + sock + ",server=on,wait=off"
	if daemon {
		args = append([]string{"--chardev", chardev, "--monitor", "chardev=vmbqmp"}, args...)
	} else {
		args = append([]string{"-chardev", chardev, "-mon", "chardev=vmbqmp,mode=control"}, args...)
	}
	p := &proc{h: h, name: name, exited: make(chan struct{}), stderr: &syncBuffer{}, disks: disks}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout = p.stderr
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		p.cmd.Wait()
		os.Remove(sock)
		close(p.exited)
	}()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		c, err := qmp.Dial(dctx, sock)
		if err == nil {
			p.qmp = c
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited: %s", bin, p.stderr.String())
		case <-dctx.Done():
			p.kill()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("start %s: %w", bin, ctx.Err())
			}
			return nil, fmt.Errorf("start %s: no QMP socket: %w", bin, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// attachProc connects to the QMP socket of a QEMU someone else runs.
func attachProc(ctx context.Context, h *Hypervisor, name, sock string, disks []DiskSpec) (*proc, error) {
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return nil, err
	}
	p := &proc{h: h, name: name, qmp: c, disks: disks}
	for _, d := range disks {
		if _, err := p.bitmaps(ctx, d.Node); err != nil {
			c.Close()
			return nil, fmt.Errorf("disk %q: %w", d.ID, err)
		}
	}
	return p, nil
}

// daemonDisks returns disks with the node names a storage daemon gives
// them.
func daemonDisks(disks []DiskSpec) []DiskSpec {
	out := append([]DiskSpec(nil), disks...)
	for i := range out {
		out[i].Node = fmt.Sprintf("vmbd%d", i)
		out[i].GuestNode = fmt.Sprintf("vmbg%d", i)
	}
	return out
}

// alive reports whether the process still runs (for an attached one:
// whether its QMP connection is up).
func (p *proc) alive() bool {
	if p.exited != nil {
		select {
		case <-p.exited:
			return false
		default:
		}
	}
	select {
	case <-p.qmp.Done():
		return false
	default:
		return true
	}
}

// quit asks the process to exit cleanly (which writes persistent bitmaps
// to the images) and waits; after a timeout it kills it.
func (p *proc) quit() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := p.qmp.Execute(ctx, "quit", nil, nil)
	if err != nil && errors.Is(err, qmp.ErrClosed) {
		err = nil // exited before replying
	}
	if p.exited == nil {
		p.qmp.Close()
		return err
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		p.kill()
		return fmt.Errorf("%s did not quit in time; killed", p.name)
	}
	p.qmp.Close()
	return err
}

// kill kills a started process at once (SIGKILL) and waits for it.
func (p *proc) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Kill()
		<-p.exited
	}
	if p.qmp != nil {
		p.qmp.Close()
	}
}

// nbdServer starts the process's NBD server on a unix socket once and
// returns the socket's path.
func (p *proc) nbdServer(ctx context.Context) (string, error) {
	p.nbdOnce.Lock()
	defer p.nbdOnce.Unlock()
	if p.nbdSock != "" {
		return p.nbdSock, nil
	}
	sock := p.h.runPath(p.h.uniq("nbd") + ".sock")
	args := map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": sock}}}
	if err := p.qmp.Execute(ctx, "nbd-server-start", args, nil); err != nil {
		return "", err
	}
	p.nbdSock = sock
	return sock, nil
}

// addExport exports node over NBD under name (also the export's id).
func (p *proc) addExport(ctx context.Context, name, node string, writable bool, bitmaps []string) error {
	args := map[string]any{"type": "nbd", "id": name, "node-name": node, "name": name, "writable": writable}
	if len(bitmaps) > 0 {
		args["bitmaps"] = bitmaps
	}
	return p.qmp.Execute(ctx, "block-export-add", args, nil)
}

// delExport deletes an export and waits until QEMU has (its bitmaps and
// node are free again). A missing export is not an error.
func (p *proc) delExport(ctx context.Context, name string) error {
	sub := p.qmp.Subscribe(func(e qmp.Event) bool { return e.Event == "BLOCK_EXPORT_DELETED" && eventField(e, "id") == name })
	defer sub.Close()
	err := p.qmp.Execute(ctx, "block-export-del", map[string]any{"id": name, "mode": "hard"}, nil)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	_, err = sub.Wait(ctx)
	return err
}

// cancelJob cancels a block job and waits for it to end. A missing job is
// not an error.
func (p *proc) cancelJob(ctx context.Context, id string) error {
	sub := p.qmp.Subscribe(func(e qmp.Event) bool {
		return (e.Event == "BLOCK_JOB_CANCELLED" || e.Event == "BLOCK_JOB_COMPLETED") && eventField(e, "device") == id
	})
	defer sub.Close()
	err := p.qmp.Execute(ctx, "block-job-cancel", map[string]any{"device": id, "force": true}, nil)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return err
	}
	_, err = sub.Wait(ctx)
	return err
}

// blockdevDel deletes a node; a missing node is not an error.
func (p *proc) blockdevDel(ctx context.Context, node string) error {
	err := p.qmp.Execute(ctx, "blockdev-del", map[string]any{"node-name": node}, nil)
	if err != nil && isNotFound(err) {
		return nil
	}
	return err
}

func eventField(e qmp.Event, key string) string {
	var m map[string]any
	json.Unmarshal(e.Data, &m)
	s, _ := m[key].(string)
	return s
}

// isNotFound tells QEMU's "no such export/job/node" errors apart.
func isNotFound(err error) bool {
	var qe *qmp.Error
	if !errors.As(err, &qe) {
		return false
	}
	if qe.Class == "DeviceNotFound" {
		return true
	}
	d := strings.ToLower(qe.Desc)
	return strings.Contains(d, "not found") || strings.Contains(d, "cannot find") || strings.Contains(d, "no job") || strings.Contains(d, "does not exist")
}

// bitmapInfo is a dirty bitmap as query-named-block-nodes reports it.
type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Persistent   bool   `json:"persistent"`
	Busy         bool   `json:"busy"`
	Inconsistent bool   `json:"inconsistent"`
}

// bitmaps returns the dirty bitmaps of node.
func (p *proc) bitmaps(ctx context.Context, node string) ([]bitmapInfo, error) {
	var nodes []struct {
		NodeName string       `json:"node-name"`
		Bitmaps  []bitmapInfo `json:"dirty-bitmaps"`
	}
	if err := p.qmp.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if n.NodeName == node {
			return n.Bitmaps, nil
		}
	}
	return nil, fmt.Errorf("node %q not found in %s", node, p.name)
}
