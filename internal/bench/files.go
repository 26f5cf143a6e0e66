package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// extent is a byte range [off, off+n) of a file.
type extent struct{ off, n int64 }

// Whence values of lseek(2) for sparse files (Linux).
const (
	seekData = 3
	seekHole = 4
)

// dataExtents returns the allocated ranges of f (SEEK_DATA/SEEK_HOLE). A
// file system that cannot tell gives one extent over the whole file.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	var out []extent
	for off := int64(0); off < size; {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break
		}
		if errors.Is(err, syscall.EINVAL) && off == 0 {
			return []extent{{0, size}}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s at %d: %w", f.Name(), off, err)
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s at %d: %w", f.Name(), data, err)
		}
		hole = min(hole, size)
		out = append(out, extent{data, hole - data})
		off = hole
	}
	return out, nil
}

// fileExtents opens path and returns its size and allocated ranges.
func fileExtents(path string) (int64, []extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	ext, err := dataExtents(f, st.Size())
	return st.Size(), ext, err
}

// allocated sums the lengths of ext.
func allocated(ext []extent) int64 {
	var n int64
	for _, e := range ext {
		n += e.n
	}
	return n
}

// sparseCopy makes dst a copy of src that keeps src's holes: only the
// allocated ranges are copied (with copy_file_range where the kernel offers
// it, through os.File.ReadFrom).
func sparseCopy(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	ext, err := dataExtents(in, st.Size())
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	for _, e := range ext {
		if _, err := in.Seek(e.off, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(e.off, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.Copy(out, io.LimitReader(in, e.n)); err != nil {
			return fmt.Errorf("copy %s to %s at %d: %w", src, dst, e.off, err)
		}
	}
	return nil
}

// mismatchError says where two files first differ.
type mismatchError struct {
	a, b string
	off  int64
	why  string
}

func (e *mismatchError) Error() string {
	return fmt.Sprintf("%s and %s differ at byte %d: %s", e.a, e.b, e.off, e.why)
}

// sameContent compares two files byte for byte, as cmp(1) would, but reads
// only the ranges that are allocated in at least one of them (a hole reads
// as zeros, so two holes are equal) and compares in parallel on all cores.
// It returns a *mismatchError naming the first differing 4 MiB block found.
func sameContent(a, b string) error {
	sa, ea, err := fileExtents(a)
	if err != nil {
		return err
	}
	sb, eb, err := fileExtents(b)
	if err != nil {
		return err
	}
	if sa != sb {
		return &mismatchError{a, b, min(sa, sb), fmt.Sprintf("sizes %d and %d", sa, sb)}
	}
	const block = 4 << 20
	// Blocks (of block bytes) that hold data in either file.
	want := map[int64]bool{}
	for _, ext := range [][]extent{ea, eb} {
		for _, e := range ext {
			for i := e.off / block; i*block < e.off+e.n; i++ {
				want[i] = true
			}
		}
	}
	blocks := make(chan int64, len(want))
	for i := range want {
		blocks <- i
	}
	close(blocks)
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pa, pb := make([]byte, block), make([]byte, block)
			for i := range blocks {
				off := i * block
				n := min(block, sa-off)
				var why string
				if _, err := fa.ReadAt(pa[:n], off); err != nil {
					why = err.Error()
				} else if _, err := fb.ReadAt(pb[:n], off); err != nil {
					why = err.Error()
				} else if !bytes.Equal(pa[:n], pb[:n]) {
					j := int64(0)
					for pa[j] == pb[j] {
						j++
					}
					off += j
					why = fmt.Sprintf("bytes %#02x and %#02x", pa[j], pb[j])
				}
				if why != "" {
					mu.Lock()
					if me, ok := first.(*mismatchError); first == nil || ok && off < me.off {
						first = &mismatchError{a, b, off, why}
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// dirUsage returns the total size (apparent bytes) and the number of
// regular files under dir.
func dirUsage(dir string) (bytes int64, files int, err error) {
	err = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
			files++
		}
		return nil
	})
	return bytes, files, err
}

// findFile returns the path of the only regular file named name under dir.
func findFile(dir, name string) (string, error) {
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && d.Name() == name {
			found = append(found, p)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if len(found) != 1 {
		return "", fmt.Errorf("want one file %q under %s, found %d", name, dir, len(found))
	}
	return found[0], nil
}

// parseSize parses "4GiB", "256MiB", "64KiB", "1TiB", "4G", "256M" or a
// byte count. Units are binary.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}} {
		if v, ok := strings.CutSuffix(t, u.suf); ok {
			t, mult = v, u.m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive size like 4GiB, 256MiB or 1048576", s)
	}
	return n * mult, nil
}

// formatSize prints a size with a binary unit ("4GiB", "1MiB", "640KiB").
func formatSize(n int64) string {
	for _, u := range []struct {
		suf string
		m   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return strconv.FormatInt(n/u.m, 10) + u.suf
		}
	}
	return strconv.FormatInt(n, 10)
}
