package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// needQEMU skips the test if the QEMU tools it runs are missing.
func needQEMU(t testing.TB, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not found: install qemu-utils (apt-get install -y qemu-utils) to run this test", b)
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// serve exports image with qemu-nbd on a unix socket and returns the
// socket's path. extra are more qemu-nbd arguments.
func serve(t testing.TB, image, format string, extra ...string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	args := append([]string{"--socket=" + sock, "--format=" + format, "--export-name=disk", "--shared=16", "--persistent"}, extra...)
	args = append(args, image)
	cmd := exec.Command("qemu-nbd", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu-nbd: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// The socket file exists before qemu-nbd listens: wait until a
	// connection is accepted.
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		if i == 500 {
			t.Fatalf("qemu-nbd did not create %s: %s", sock, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dial(t testing.TB, sock string, opts Options) *Conn {
	t.Helper()
	if opts.Export == "" {
		opts.Export = "disk"
	}
	c, err := Dial(context.Background(), "unix", sock, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const mib = 1 << 20

// testImage writes a raw image of size with random data in a few places and
// returns its path and content.
func testImage(t *testing.T, size int64, seed uint64) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 1))
	for _, r := range [][2]int64{{0, 4096}, {mib - 100, 300}, {3 * mib, mib + 17}, {size - 512, 512}} {
		for i := r[0]; i < r[0]+r[1]; i++ {
			want[i] = byte(rng.Uint32()) | 1
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]int64{{0, 4096}, {mib - 100, 300}, {3 * mib, mib + 17}, {size - 512, 512}} {
		if _, err := f.WriteAt(want[r[0]:r[0]+r[1]], r[0]); err != nil {
			t.Fatal(err)
		}
	}
	return path, want
}

func TestReadAt(t *testing.T) {
	needQEMU(t, "qemu-nbd", "qemu-img")
	size := int64(8 * mib)
	raw, want := testImage(t, size, 1)
	qcow := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
	for _, tc := range []struct{ name, path, format string }{{"raw", raw, "raw"}, {"qcow2", qcow, "qcow2"}} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, serve(t, tc.path, tc.format, "--read-only"), Options{})
			if c.Size() != size {
				t.Fatalf("Size = %d, want %d", c.Size(), size)
			}
			if !c.ReadOnly() {
				t.Errorf("ReadOnly = false for a --read-only export")
			}
			for _, r := range []struct {
				off     int64
				n       int
				wantN   int
				wantEOF bool
			}{
				{0, 4096, 4096, false},
				{12345, 777, 777, false},
				{mib - 1000, 2000, 2000, false},
				{0, int(size), int(size), false},
				{size - 1000, 4096, 1000, true},
				{size, 10, 0, true},
				{size + 5, 10, 0, true},
			} {
				p := bytes.Repeat([]byte{0xee}, r.n)
				n, err := c.ReadAt(p, r.off)
				if n != r.wantN || (err == io.EOF) != r.wantEOF || (err != nil && err != io.EOF) {
					t.Fatalf("ReadAt(%d bytes at %d) = %d, %v; want %d, eof %v", r.n, r.off, n, err, r.wantN, r.wantEOF)
				}
				if n > 0 && !bytes.Equal(p[:n], want[r.off:r.off+int64(n)]) {
					t.Fatalf("ReadAt(%d bytes at %d): data differs from the image", r.n, r.off)
				}
			}
			if _, err := c.ReadAt(make([]byte, 1), -1); err == nil {
				t.Errorf("ReadAt at -1 succeeded")
			}
			if _, err := c.WriteAt([]byte{1}, 0); err == nil {
				t.Errorf("WriteAt on a read-only export succeeded")
			}
		})
	}
}

func TestConcurrentReads(t *testing.T) {
	needQEMU(t, "qemu-nbd")
	size := int64(8 * mib)
	raw, want := testImage(t, size, 2)
	c := dial(t, serve(t, raw, "raw", "--read-only"), Options{})
	c.maxReq = 64 << 10 // many requests per read, many in flight
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for range 50 {
				off := rng.Int64N(size)
				n := rng.Int64N(min(size-off, 300<<10)) + 1
				p := make([]byte, n)
				if _, err := c.ReadAt(p, off); err != nil && err != io.EOF {
					errs <- err
					return
				}
				if !bytes.Equal(p, want[off:off+n]) {
					errs <- fmt.Errorf("read %d at %d: wrong data", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestWriteFlush(t *testing.T) {
	needQEMU(t, "qemu-nbd", "qemu-img")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "4M")
	ref := filepath.Join(t.TempDir(), "ref.raw")
	want := make([]byte, 4*mib)
	rng := rand.New(rand.NewPCG(3, 3))
	sock := serve(t, img, "qcow2")
	c := dial(t, sock, Options{})
	if c.ReadOnly() {
		t.Fatal("writable export reports ReadOnly")
	}
	c.maxReq = 256 << 10
	for _, w := range [][2]int64{{0, 1}, {4095, 2}, {100000, 700000}, {4*mib - 3, 3}} {
		p := make([]byte, w[1])
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		copy(want[w[0]:], p)
		if n, err := c.WriteAt(p, w[0]); err != nil || n != len(p) {
			t.Fatalf("WriteAt(%d at %d) = %d, %v", len(p), w[0], n, err)
		}
	}
	if _, err := c.WriteAt([]byte{1, 2}, 4*mib-1); err == nil {
		t.Errorf("WriteAt across the end succeeded")
	}
	got := make([]byte, 4*mib)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read back differs from what was written")
	}
	if err := c.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	c.Close()
	if _, err := c.ReadAt(got, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v, want ErrClosed", err)
	}
	if err := os.WriteFile(ref, want, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw", img, ref)
}

func TestBlockStatus(t *testing.T) {
	needQEMU(t, "qemu-nbd", "qemu-img", "qemu-io")
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", img, "8M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 7 0 64k", "-c", "write -P 9 1M 128k", img)
	run(t, "qemu-img", "bitmap", "--add", img, "b0")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 2M 4k", "-c", "write -z 4M 64k", img)
	run(t, "qemu-img", "bitmap", "--disable", img, "b0")

	c := dial(t, serve(t, img, "qcow2", "--read-only", "--bitmap=b0"), Options{MetaContexts: []string{ContextAllocation, DirtyBitmapContext("b0")}})
	ctx := context.Background()
	alloc, err := c.BlockStatus(ctx, ContextAllocation, 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var data []Extent
	for _, e := range alloc {
		if e.Flags&StateZero == 0 {
			data = append(data, Extent{e.Offset, e.Length, 0})
		}
	}
	wantData := []Extent{{0, 64 << 10, 0}, {mib, 128 << 10, 0}, {2 * mib, 4096, 0}}
	if diff := cmp.Diff(wantData, data); diff != "" {
		t.Errorf("non-zero extents (-want +got):\n%s\nall: %v", diff, alloc)
	}
	dirty, err := c.BlockStatus(ctx, DirtyBitmapContext("b0"), 0, c.Size())
	if err != nil {
		t.Fatal(err)
	}
	var gotDirty []Extent
	for _, e := range dirty {
		if e.Flags&StateDirty != 0 {
			gotDirty = append(gotDirty, e)
		}
	}
	wantDirty := []Extent{{2 * mib, 64 << 10, 1}, {4 * mib, 64 << 10, 1}}
	if diff := cmp.Diff(wantDirty, gotDirty); diff != "" {
		t.Errorf("dirty extents (-want +got):\n%s", diff)
	}
	// A sub-range is answered exactly.
	part, err := c.BlockStatus(ctx, DirtyBitmapContext("b0"), 2*mib+100, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Extent{{2*mib + 100, 1000, 1}}, part); diff != "" {
		t.Errorf("sub-range (-want +got):\n%s", diff)
	}
	if _, err := c.BlockStatus(ctx, "qemu:dirty-bitmap:nope", 0, 10); err == nil {
		t.Errorf("BlockStatus on an unnegotiated context succeeded")
	}
	// A context the export does not have fails the handshake.
	sock := serve(t, img, "qcow2", "--read-only")
	if _, err := Dial(ctx, "unix", sock, Options{Export: "disk", MetaContexts: []string{DirtyBitmapContext("b0")}}); err == nil {
		t.Errorf("Dial with a missing bitmap context succeeded")
	}
	if _, err := Dial(ctx, "unix", sock, Options{Export: "other"}); err == nil {
		t.Errorf("Dial of an unknown export succeeded")
	}
}

func TestTCP(t *testing.T) {
	needQEMU(t, "qemu-nbd")
	raw, want := testImage(t, 8*mib, 4)
	port := 20000 + rand.IntN(20000)
	cmd := exec.Command("qemu-nbd", "--bind=127.0.0.1", fmt.Sprintf("--port=%d", port), "--format=raw", "--read-only", "--export-name=disk", raw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var c *Conn
	var err error
	for range 200 {
		if c, err = Dial(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port), Options{Export: "disk"}); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := make([]byte, 8*mib)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data over TCP differs")
	}
}
