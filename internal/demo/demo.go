// Package demo holds the set-up that the example programs share, so each
// example shows only the library calls it is about: opening a repository
// from a URL (or a temporary file:// one), a "lab" VM to back up with a
// realistic generated disk, guest writes, checksums of disks, and human
// output (sizes, rates, a progress bar on terminals).
package demo

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	_ "gocloud.dev/blob/fileblob" // file:// repositories
	_ "gocloud.dev/blob/memblob"  // mem:// repositories
	_ "gocloud.dev/blob/s3blob"   // s3:// repositories

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
)

// OpenRepository opens the repository at rawURL, creating it if the bucket
// holds none. An empty rawURL means a new file:// repository under dir.
func OpenRepository(ctx context.Context, rawURL, dir string) (*repository.Repository, string, error) {
	if rawURL == "" {
		p := filepath.Join(dir, "repository")
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, "", err
		}
		rawURL = (&url.URL{Scheme: "file", Path: filepath.ToSlash(p)}).String()
	}
	repo, err := repository.Open(ctx, rawURL, nil)
	if errors.Is(err, repository.ErrNoRepository) {
		repo, err = repository.Init(ctx, rawURL, nil)
	}
	if err != nil {
		return nil, "", fmt.Errorf("open repository %s: %w", rawURL, err)
	}
	return repo, rawURL, nil
}

// Lab is a hypervisor with one VM to play with, and the guest's hands on
// its disks (which the hypervisor contract does not offer).
type Lab struct {
	HV hypervisor.Hypervisor
	VM hypervisor.VM
	// WriteDisk writes to a disk as the VM's guest would.
	WriteDisk func(ctx context.Context, vmID, diskID string, off int64, p []byte) error
	// ReadDisk reads a disk's current content (any VM of HV).
	ReadDisk func(ctx context.Context, vmID, diskID string, off int64, p []byte) error
	// Close releases the lab.
	Close func() error
}

// FakeLab returns the fake hypervisor with one running VM whose disk is a
// raw image file of size bytes under dir, generated with seed: 40 % holes,
// 30 % compressible, 30 % random.
func FakeLab(ctx context.Context, dir string, size, seed int64) (*Lab, error) {
	img := filepath.Join(dir, "disk.raw")
	if err := testimage.GenerateFile(ctx, img, size, seed); err != nil {
		return nil, err
	}
	hv := fake.New(nil)
	vm, err := hv.AddFileVM("demo", img)
	if err != nil {
		return nil, err
	}
	return &Lab{HV: hv, VM: vm, WriteDisk: hv.WriteDisk, ReadDisk: hv.ReadDisk, Close: hv.Close}, nil
}

// GuestWrites rewrites fraction of the 64 KiB blocks of every disk of the
// lab's VM, as a busy guest would between two backups. It does nothing on a
// lab without guest access (WriteDisk nil).
func (l *Lab) GuestWrites(ctx context.Context, fraction float64, seed int64) error {
	if l.WriteDisk == nil {
		return nil
	}
	for i, d := range l.VM.Disks {
		w := writerAt(func(p []byte, off int64) error { return l.WriteDisk(ctx, l.VM.ID, d.ID, off, p) })
		if _, err := testimage.Mutate(ctx, w, d.Size, fraction, seed+int64(i), false); err != nil {
			return err
		}
	}
	return nil
}

type writerAt func(p []byte, off int64) error

func (w writerAt) WriteAt(p []byte, off int64) (int, error) {
	if err := w(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Sums returns the SHA-256 of every disk of VM vmID (disks in order).
func (l *Lab) Sums(ctx context.Context, vmID string) ([][32]byte, error) {
	vm, err := l.HV.VM(ctx, vmID)
	if err != nil {
		return nil, err
	}
	read := l.ReadDisk
	if read == nil {
		// No direct access: read a snapshot, which every hypervisor offers.
		snap, err := l.HV.Snapshot(ctx, vmID, hypervisor.SnapshotOptions{Name: "vmbackup-verify"})
		if err != nil {
			return nil, err
		}
		defer snap.Release(context.WithoutCancel(ctx))
		read = func(ctx context.Context, _, diskID string, off int64, p []byte) error {
			d, err := snap.OpenDisk(ctx, diskID)
			if err != nil {
				return err
			}
			defer d.Close()
			_, err = d.ReadAt(p, off)
			return err
		}
	}
	var out [][32]byte
	buf := make([]byte, 4<<20)
	for _, d := range vm.Disks {
		h := sha256.New()
		for off := int64(0); off < d.Size; off += int64(len(buf)) {
			p := buf[:min(int64(len(buf)), d.Size-off)]
			if err := read(ctx, vmID, d.ID, off, p); err != nil {
				return nil, err
			}
			h.Write(p)
		}
		out = append(out, [32]byte(h.Sum(nil)))
	}
	return out, nil
}

// Verify reports an error unless VM vmID's disks have the sums want.
func (l *Lab) Verify(ctx context.Context, vmID string, want [][32]byte) error {
	got, err := l.Sums(ctx, vmID)
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("vm %s has %d disks, want %d", vmID, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("vm %s disk %d differs from the restore point", vmID, i+1)
		}
	}
	return nil
}

// Bytes formats n bytes for humans ("12.3 MiB").
func Bytes(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "KiB", "MiB", "GiB", "TiB"} {
		if f < 1024 || u == "TiB" {
			if u == "B" {
				return fmt.Sprintf("%d B", n)
			}
			return fmt.Sprintf("%.1f %s", f, u)
		}
		f /= 1024
	}
	return ""
}

// Rate formats n bytes in d as MB/s.
func Rate(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB/s", float64(n)/1e6/d.Seconds())
}

// IsTerminal reports whether f is a terminal (a character device).
func IsTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// ProgressBar returns an event subscriber that draws a one-line progress
// bar on w for each VM in progress, or nil if w is not a terminal.
func ProgressBar(w *os.File) func(backup.Event) {
	if !IsTerminal(w) {
		return nil
	}
	var mu sync.Mutex
	start := time.Now()
	return func(ev backup.Event) {
		mu.Lock()
		defer mu.Unlock()
		switch ev.Type {
		case backup.EventVMStarted:
			start = time.Now()
		case backup.EventProgress:
			const width = 30
			frac := 1.0
			if ev.BytesTotal > 0 {
				frac = float64(ev.BytesDone) / float64(ev.BytesTotal)
			}
			n := int(frac * width)
			fmt.Fprintf(w, "\r  %-16s [%s%s] %3.0f%% %s   ", string(ev.JobKind), strings.Repeat("#", n), strings.Repeat(" ", width-n), frac*100, Rate(ev.BytesDone, time.Since(start)))
		case backup.EventVMFinished:
			fmt.Fprint(w, "\r"+strings.Repeat(" ", 80)+"\r")
		}
	}
}

var _ io.Writer = (*os.File)(nil)
