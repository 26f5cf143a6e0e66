package qemu

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// fakeAgent plays qemu-guest-agent on a unix socket and records the
// commands it receives.
type fakeAgent struct {
	sock string
	mu   sync.Mutex
	cmds []string
}

func (a *fakeAgent) commands() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.cmds...)
}

func startFakeAgent(t *testing.T) *fakeAgent {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmbqa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &fakeAgent{sock: filepath.Join(dir, "qga.sock")}
	l, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				dec := json.NewDecoder(bufio.NewReader(c))
				enc := json.NewEncoder(c)
				for {
					var req struct {
						Execute   string         `json:"execute"`
						Arguments map[string]any `json:"arguments"`
						ID        any            `json:"id"`
					}
					if dec.Decode(&req) != nil {
						return
					}
					a.mu.Lock()
					a.cmds = append(a.cmds, req.Execute)
					a.mu.Unlock()
					var ret any = map[string]any{}
					switch req.Execute {
					case "guest-sync":
						ret = req.Arguments["id"]
					case "guest-fsfreeze-freeze", "guest-fsfreeze-thaw":
						ret = 1
					}
					enc.Encode(map[string]any{"return": ret, "id": req.ID})
				}
			}()
		}
	}()
	return a
}
