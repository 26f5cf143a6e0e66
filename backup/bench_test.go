package backup_test

// Benchmarks of the engine on a file-backed image with 40 % holes, 30 %
// compressible and 30 % random data, into a file:// repository:
//
//	go test -run '^$' -bench . -benchtime 1x ./backup/
//	VMBACKUP_BENCH_SIZE=4GiB go test -run '^$' -bench . -benchtime 1x -timeout 1h ./backup/
//
// Each reports MB/s of the disk's logical size, MB/s of the bytes actually
// read, the repository's stored bytes, and peak RSS of the process during
// the timed part (Linux; VmHWM reset through /proc/self/clear_refs).

import (
	"bufio"
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

// benchSize is the image size: VMBACKUP_BENCH_SIZE ("4GiB", "512MiB" or
// bytes), 256 MiB by default.
func benchSize(b *testing.B) int64 {
	s := os.Getenv("VMBACKUP_BENCH_SIZE")
	if s == "" {
		return 256 << 20
	}
	mult := int64(1)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40} {
		if strings.HasSuffix(s, suf) {
			s, mult = strings.TrimSuffix(s, suf), m
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("VMBACKUP_BENCH_SIZE=%q: want a size like 4GiB", os.Getenv("VMBACKUP_BENCH_SIZE"))
	}
	return n * mult
}

type benchEnv struct {
	dir  string
	img  string
	size int64
	hv   *fake.Hypervisor
	vmID string
	repo *repository.Repository
	svc  *backup.Service
}

func newBenchEnv(b *testing.B, fopts *fake.Options) *benchEnv {
	b.Helper()
	ctx := context.Background()
	e := &benchEnv{dir: b.TempDir(), size: benchSize(b)}
	e.img = filepath.Join(e.dir, "disk.raw")
	if err := testimage.GenerateFile(ctx, e.img, e.size, 1); err != nil {
		b.Fatal(err)
	}
	e.hv = fake.New(fopts)
	b.Cleanup(func() { e.hv.Close() })
	vm, err := e.hv.AddFileVM("bench", e.img)
	if err != nil {
		b.Fatal(err)
	}
	e.vmID = vm.ID
	e.newRepo(b)
	return e
}

// newRepo replaces the repository (and Service) with an empty one.
func (e *benchEnv) newRepo(b *testing.B) {
	b.Helper()
	if e.repo != nil {
		e.repo.Close()
	}
	dir, err := os.MkdirTemp(e.dir, "repo-")
	if err != nil {
		b.Fatal(err)
	}
	u := (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir)}).String()
	if e.repo, err = repository.Init(context.Background(), u, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.repo.Close() })
	if e.svc, err = backup.New(backup.Config{Hypervisor: e.hv, Repository: e.repo, Logger: quiet()}); err != nil {
		b.Fatal(err)
	}
}

func (e *benchEnv) backup(b *testing.B) backup.VMResult {
	b.Helper()
	job, err := e.svc.Backup(context.Background(), backup.Request{VMIDs: []string{e.vmID}})
	if err != nil {
		b.Fatal(err)
	}
	return job.VMs[0]
}

func (e *benchEnv) dirBytes(b *testing.B) int64 {
	var n int64
	filepath.Walk(e.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && strings.Contains(p, "repo-") {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// resetPeak resets the process's peak RSS (Linux); peakRSS reads it.
func resetPeak() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakRSS() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

func report(b *testing.B, logical, read int64, d time.Duration) {
	b.ReportMetric(float64(logical)*float64(b.N)/1e6/d.Seconds(), "MB/s")
	b.ReportMetric(float64(read)*float64(b.N)/1e6/d.Seconds(), "read-MB/s")
	b.ReportMetric(peakRSS(), "peak-RSS-MiB")
}

// BenchmarkFull: a full backup into an empty repository.
func BenchmarkFull(b *testing.B) {
	e := newBenchEnv(b, nil)
	var read, stored int64
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		e.newRepo(b)
		resetPeak()
		b.StartTimer()
		t := time.Now()
		r := e.backup(b)
		total += time.Since(t)
		read, stored = r.BytesRead, r.BytesStored
	}
	report(b, e.size, read, total)
	b.ReportMetric(float64(stored)/(1<<20), "stored-MiB")
	b.ReportMetric(float64(e.dirBytes(b))/(1<<20), "repo-MiB")
}

func benchIncremental(b *testing.B, fopts *fake.Options) {
	e := newBenchEnv(b, fopts)
	e.backup(b)
	var read, stored int64
	var total time.Duration
	seed := int64(100)
	for b.Loop() {
		b.StopTimer()
		seed++
		// Guest writes go through the hypervisor, so change tracking sees them.
		if _, err := testimage.Mutate(context.Background(), diskWriterAt{e.hv, e.vmID, "disk-1"}, e.size, 0.01, seed, false); err != nil {
			b.Fatal(err)
		}
		resetPeak()
		b.StartTimer()
		t := time.Now()
		r := e.backup(b)
		total += time.Since(t)
		read, stored = r.BytesRead, r.BytesStored
	}
	report(b, e.size, read, total)
	b.ReportMetric(float64(stored)/(1<<20), "stored-MiB")
}

// BenchmarkIncremental: 1 % of 64 KiB blocks rewritten, with change
// tracking.
func BenchmarkIncremental(b *testing.B) { benchIncremental(b, nil) }

// BenchmarkIncrementalHashOnly: 1 % rewritten, without change tracking:
// everything allocated is read and hashed, only new chunks are stored.
func BenchmarkIncrementalHashOnly(b *testing.B) {
	benchIncremental(b, &fake.Options{NoChangeTracking: true})
}

// BenchmarkRestore: a restore point written onto a new, empty (sparse)
// image file of the same size, which is not read (TargetZeroed).
func BenchmarkRestore(b *testing.B) {
	ctx := context.Background()
	e := newBenchEnv(b, nil)
	point := e.backup(b).PointID
	m, err := e.repo.Point(ctx, point)
	if err != nil {
		b.Fatal(err)
	}
	var written int64
	var total time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		n++
		target := filepath.Join(e.dir, "target-"+strconv.Itoa(n)+".raw")
		f, err := os.Create(target)
		if err == nil {
			err = f.Truncate(e.size)
			f.Close()
		}
		if err != nil {
			b.Fatal(err)
		}
		vm, err := e.hv.AddFileVM("target-"+strconv.Itoa(n), target)
		if err != nil {
			b.Fatal(err)
		}
		if err := e.hv.PowerOff(ctx, vm.ID); err != nil {
			b.Fatal(err)
		}
		resetPeak()
		b.StartTimer()
		t := time.Now()
		res, err := restore.InPlace(ctx, e.hv, e.repo, m, &restore.InPlaceOptions{VMID: vm.ID, TargetZeroed: true, Options: restore.Options{Logger: quiet()}})
		if err != nil {
			b.Fatal(err)
		}
		total += time.Since(t)
		written = res.BytesWritten
		b.StopTimer()
		if n == 1 {
			same, err := sameFiles(e.img, target)
			if err != nil || !same {
				b.Fatalf("restored image differs from the source (%v)", err)
			}
		}
		os.Remove(target)
		b.StartTimer()
	}
	report(b, e.size, written, total)
}

// sameFiles compares two files chunk by chunk.
func sameFiles(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, err
	}
	defer fb.Close()
	pa, pb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; off += int64(len(pa)) {
		na, ea := fa.ReadAt(pa, off)
		nb, _ := fb.ReadAt(pb, off)
		if na != nb || string(pa[:na]) != string(pb[:nb]) {
			return false, nil
		}
		if ea != nil {
			return true, nil
		}
	}
}
