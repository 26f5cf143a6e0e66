package exclusive

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "obj")
	if err := Create(path, []byte("first")); err != nil {
		t.Fatal(err)
	}
	if err := Create(path, []byte("second")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second Create = %v, want fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "first" {
		t.Fatalf("content %q, want %q", got, "first")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("%d entries left in the directory, want only the object", len(ents))
	}
}

// TestCreateRace: of many concurrent creators exactly one wins.
func TestCreateRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "obj")
	var wg sync.WaitGroup
	wins := make(chan int, 16)
	for i := range 16 {
		wg.Go(func() {
			if Create(path, []byte{byte(i)}) == nil {
				wins <- i
			}
		})
	}
	wg.Wait()
	close(wins)
	var n int
	for range wins {
		n++
	}
	if n != 1 {
		t.Fatalf("%d creators won, want exactly 1", n)
	}
}
