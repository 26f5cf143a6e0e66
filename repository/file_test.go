package repository_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/vmbackup/vmbackup/repository"
)

const childEnv = "VMBACKUP_REPOSITORY_INIT_CHILD"

// TestInitChild is not a test: run by TestFileInitTwoProcesses in a child
// process, it tries Init on every directory named in childEnv and prints
// one line per directory: "won" or "lost".
func TestInitChild(t *testing.T) {
	dirs := os.Getenv(childEnv)
	if dirs == "" {
		t.Skip("helper for TestFileInitTwoProcesses")
	}
	ctx := context.Background()
	for _, dir := range strings.Split(dirs, string(os.PathListSeparator)) {
		r, err := repository.Init(ctx, "file://"+dir, nil)
		switch {
		case err == nil:
			fmt.Printf("%s won\n", dir)
			r.Close()
		case errors.Is(err, repository.ErrExists):
			fmt.Printf("%s lost\n", dir)
		default:
			t.Fatalf("Init(%s): %v", dir, err)
		}
	}
}

// TestFileInitTwoProcesses races two processes to Init the same file://
// repositories: for each, exactly one must win. fileblob's own IfNotExist
// (a stat, then a rename, under a mutex of its own process) would let both
// win; the repository publishes commit objects with link(2) instead.
func TestFileInitTwoProcesses(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		t.Skip("in the child")
	}
	base := t.TempDir()
	var dirs []string
	for i := range 200 {
		dirs = append(dirs, filepath.Join(base, fmt.Sprint(i)))
	}
	arg := strings.Join(dirs, string(os.PathListSeparator))
	outs := make([]string, 2)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(os.Args[0], "-test.run=^TestInitChild$", "-test.count=1")
			cmd.Env = append(os.Environ(), childEnv+"="+arg)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("child %d: %v\n%s", i, err, out)
			}
			outs[i] = string(out)
		}()
	}
	wg.Wait()
	wins := map[string]int{}
	for _, out := range outs {
		for _, line := range strings.Split(out, "\n") {
			if dir, ok := strings.CutSuffix(line, " won"); ok {
				wins[dir]++
			}
		}
	}
	for _, dir := range dirs {
		if wins[dir] != 1 {
			t.Errorf("Init of %s won in %d processes, want exactly 1", dir, wins[dir])
		}
		// And the winner's repository opens.
		r, err := repository.Open(context.Background(), "file://"+dir, nil)
		if err != nil {
			t.Errorf("Open(%s): %v", dir, err)
			continue
		}
		r.Close()
	}
}

// TestFileURL checks how file:// repositories are opened: no .attrs
// sidecars, no temp files left, a missing directory is no repository.
func TestFileURL(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	if _, err := repository.Open(ctx, "file://"+dir, nil); !errors.Is(err, repository.ErrNoRepository) {
		t.Errorf("Open(missing dir) = %v, want ErrNoRepository", err)
	}
	r, err := repository.Init(ctx, "file://"+dir, &repository.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	w, err := r.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := []byte("some data")
	id := r.HashChunk(p)
	if _, err := w.PutChunk(ctx, id, p); err != nil {
		t.Fatal(err)
	}
	x := repository.NewIndex(int64(len(p)), 64<<10)
	x.Set(0, id)
	m := &repository.Manifest{VMID: "vm", Disks: []repository.DiskRecord{{ID: "d", Size: int64(len(p))}}}
	if err := w.Commit(ctx, m, map[string]*repository.Index{"d": x}); err != nil {
		t.Fatal(err)
	}
	r.Close()
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if strings.HasSuffix(path, ".attrs") || strings.HasSuffix(path, ".tmp") {
			t.Errorf("file %s left in the repository", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err = repository.Open(ctx, "file://"+dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.Point(ctx, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	d, err := r.OpenDisk(ctx, got, "d")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(p))
	if _, err := d.ReadAt(buf, 0); err != nil || string(buf) != string(p) {
		t.Errorf("ReadAt = %q, %v; want %q", buf, err, p)
	}
}
