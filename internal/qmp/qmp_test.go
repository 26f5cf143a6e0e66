package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// daemon starts qemu-storage-daemon with a QMP socket and returns a client.
func daemon(t *testing.T) (*Client, string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		t.Skip("qemu-storage-daemon not found: install qemu-utils (apt-get install -y qemu-utils) to run this test")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.Command("qemu-storage-daemon", "--chardev", "socket,id=m,path="+sock+",server=on,wait=off", "--monitor", "chardev=m")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, sock)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c, dir
		}
		if ctx.Err() != nil {
			t.Fatalf("dial %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestExecute(t *testing.T) {
	c, _ := daemon(t)
	ctx := t.Context()
	var v struct {
		QEMU struct{ Major, Minor int } `json:"qemu"`
	}
	if err := c.Execute(ctx, "query-version", nil, &v); err != nil {
		t.Fatal(err)
	}
	if v.QEMU.Major < 5 {
		t.Errorf("query-version: major %d", v.QEMU.Major)
	}
	err := c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Errorf("unknown command: %v, want a CommandNotFound *Error", err)
	}
	// Replies above 64 KiB are fine.
	var schema []json.RawMessage
	if err := c.Execute(ctx, "query-qmp-schema", nil, &schema); err != nil {
		t.Fatal(err)
	}
	if len(schema) < 100 {
		t.Errorf("query-qmp-schema: %d entries", len(schema))
	}
	// Concurrent commands each get their own reply.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := "n" + string(rune('a'+i))
			args := map[string]any{"driver": "null-co", "node-name": name, "size": 1 << 20 * (i + 1)}
			if err := c.Execute(ctx, "blockdev-add", args, nil); err != nil {
				t.Error(err)
				return
			}
			var nodes []struct {
				NodeName string `json:"node-name"`
				Image    struct {
					VirtualSize int64 `json:"virtual-size"`
				} `json:"image"`
			}
			if err := c.Execute(ctx, "query-named-block-nodes", map[string]any{"flat": true}, &nodes); err != nil {
				t.Error(err)
				return
			}
			for _, n := range nodes {
				if n.NodeName == name && n.Image.VirtualSize != 1<<20*int64(i+1) {
					t.Errorf("node %s: size %d", name, n.Image.VirtualSize)
				}
			}
		}()
	}
	wg.Wait()
}

func TestEvents(t *testing.T) {
	c, dir := daemon(t)
	ctx := t.Context()
	must := func(cmd string, args any) {
		t.Helper()
		if err := c.Execute(ctx, cmd, args, nil); err != nil {
			t.Fatal(err)
		}
	}
	must("blockdev-add", map[string]any{"driver": "null-co", "node-name": "n0", "size": 1 << 20})
	must("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix", "data": map[string]any{"path": filepath.Join(dir, "nbd.sock")}}})
	all := c.Subscribe(nil) // never read until the end: must not block the reader
	defer all.Close()
	for i := range 3 {
		id := "e" + string(rune('0'+i))
		must("block-export-add", map[string]any{"type": "nbd", "id": id, "node-name": "n0"})
		sub := c.Subscribe(func(e Event) bool { return e.Event == "BLOCK_EXPORT_DELETED" })
		must("block-export-del", map[string]any{"id": id})
		ev, err := sub.Wait(ctx)
		sub.Close()
		if err != nil {
			t.Fatal(err)
		}
		var d struct{ ID string }
		json.Unmarshal(ev.Data, &d)
		if d.ID != id {
			t.Errorf("BLOCK_EXPORT_DELETED for %q, want %q", d.ID, id)
		}
	}
	var n int
	for {
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		_, err := all.Wait(wctx)
		cancel()
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if n != 3 {
		t.Errorf("catch-all subscription got %d events, want 3", n)
	}
	// A Wait on a dead connection ends with ErrClosed.
	must("quit", nil)
	sub := c.Subscribe(func(Event) bool { return false })
	if _, err := sub.Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after quit: %v, want ErrClosed", err)
	}
	if err := c.Execute(ctx, "query-version", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after quit: %v, want ErrClosed", err)
	}
}
