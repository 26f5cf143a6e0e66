package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"

	_ "gocloud.dev/blob/fileblob" // file:// repositories

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

// Step names, as in the table.
const (
	stepFull     = "full"
	stepIncrCBT  = "incr-cbt"
	stepIncrHash = "incr-hash"
	stepIncr     = "incr" // the peers' incremental: a second backup, which reads everything
	stepRestore  = "restore"
	// stepRestoreDirect is ref's restore with O_DIRECT writes.
	stepRestoreDirect = "restore-direct"
	// stepFullPacks is ref's full backup into pack files.
	stepFullPacks = "full-packs"
	// stepRecompress is vmbackup's recompression of the full backup's
	// chunks to -recompress, off the backup window.
	stepRecompress = "recompress"
)

// profileSteps are the vmbackup steps -profile-step can name.
var profileSteps = []string{stepFull, stepIncrCBT, stepIncrHash, stepRestore}

// chainArgs configure the vmbackup chain child.
type chainArgs struct {
	image       string // the VM's disk; mutated by the chain
	repo        string // directory of a new file:// repository
	chunk       int64
	codec       string
	recompress  string // codec the full point's chunks are rewritten to after it; "" for none
	fraction    float64
	mutSize     int64 // the mutations touch the first mutSize bytes
	clustered   bool
	mutSeed     int64 // mutation before incr-cbt
	hashSeed    int64 // mutation before incr-hash
	phases      []string
	cpuProfile  string // CPU profile of step profileStep, if set
	profileStep string
	drop        bool
}

// fileURL returns the file:// URL of a directory.
func fileURL(dir string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir)}).String()
}

// diskWriter plays the guest: writes through the fake hypervisor, so change
// tracking sees them.
type diskWriter struct {
	hv   *fake.Hypervisor
	vmID string
	disk string
}

func (w diskWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.hv.WriteDisk(context.Background(), w.vmID, w.disk, off, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// vmbackupChain runs, in this process, a full backup of the image on the
// fake hypervisor, the mutation written by the guest, an incremental with
// change tracking, then (with tracking turned off) a second mutation and an
// incremental without it. They share one process because the fake's change
// tokens name the fake instance and do not survive a restart; each phase
// is measured with getrusage deltas and a reset VmHWM (see Phase).
func vmbackupChain(ctx context.Context, a chainArgs) ([]Phase, error) {
	repo, err := repository.Init(ctx, fileURL(a.repo), &repository.InitOptions{ChunkSize: int(a.chunk), Codec: a.codec})
	if err != nil {
		return nil, fmt.Errorf("init repository: %w", err)
	}
	defer repo.Close()
	hv := fake.New(nil)
	defer hv.Close()
	vm, err := hv.AddFileVM("bench", a.image)
	if err != nil {
		return nil, err
	}
	svc, err := backup.New(backup.Config{Hypervisor: hv, Repository: repo, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, err
	}
	var out []Phase
	var before int64
	// add records phase p with the repository's size after it.
	add := func(p Phase) (err error) {
		if p.RepoBytes, p.RepoFiles, err = dirUsage(a.repo); err != nil {
			return err
		}
		p.Growth, before = p.RepoBytes-before, p.RepoBytes
		out = append(out, p)
		return nil
	}
	run := func(step string) error {
		if err := settle(a.drop); err != nil {
			return err
		}
		profile := a.cpuProfile != "" && step == a.profileStep
		m := startPhase()
		if profile {
			stop, err := startProfile(a.cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
		}
		job, err := svc.Backup(ctx, backup.Request{VMIDs: []string{vm.ID}, Manual: true})
		if profile {
			pprof.StopCPUProfile()
		}
		p := m.stop(step)
		if err == nil {
			err = job.Err
		}
		if err != nil {
			return fmt.Errorf("%s backup: %w", step, err)
		}
		r := job.VMs[0]
		if r.Err != nil {
			return fmt.Errorf("%s backup: %w", step, r.Err)
		}
		p.Read, p.Stored, p.Point = r.BytesRead, r.BytesStored, r.PointID
		p.Note = r.Kind + ": " + r.Reason
		return add(p)
	}
	mutate := func(seed int64) error {
		_, err := testimage.Mutate(ctx, diskWriter{hv, vm.ID, vm.Disks[0].ID}, a.mutSize, a.fraction, seed, a.clustered)
		return err
	}
	if err := run(stepFull); err != nil {
		return nil, err
	}
	if a.recompress != "" {
		// The window mode: the full backup stored -codec inside the
		// window; after it, the chunks it added are rewritten with the
		// stronger codec, as a plan's Compression.RecompressTo does.
		if err := settle(a.drop); err != nil {
			return nil, err
		}
		m := startPhase()
		rep, err := repo.Recompress(ctx, &repository.RecompressOptions{Codec: a.recompress, Points: []string{out[0].Point}})
		p := m.stop(stepRecompress)
		if err != nil {
			return nil, fmt.Errorf("recompress: %w", err)
		}
		p.Note = fmt.Sprintf("%d of %d chunks rewritten to %s, %s to %s", rep.Rewritten, rep.Chunks, a.recompress, mib(rep.BytesBefore), mib(rep.BytesAfter))
		if err := add(p); err != nil {
			return nil, err
		}
	}
	if slices.Contains(a.phases, stepIncrCBT) {
		if err := mutate(a.mutSeed); err != nil {
			return nil, err
		}
		if err := run(stepIncrCBT); err != nil {
			return nil, err
		}
	}
	if slices.Contains(a.phases, stepIncrHash) {
		hv.SetChangeTracking(vm.ID, false)
		if err := mutate(a.hashSeed); err != nil {
			return nil, err
		}
		if err := run(stepIncrHash); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// startProfile starts a CPU profile into path; stop stops it (again is
// harmless) and closes the file.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// vmbackupRestore writes restore point point of the repository in dir onto
// a new sparse file target of size bytes, attached to the fake hypervisor
// as a stopped VM, through Service.RestoreInPlace, with a CPU profile of
// the restore in cpuProfile if it is not "". The restore is not told that
// the target is empty: the engine finds out from its allocated extents.
func vmbackupRestore(ctx context.Context, dir, point, target string, size int64, cpuProfile string) (Phase, error) {
	repo, err := repository.Open(ctx, fileURL(dir), nil)
	if err != nil {
		return Phase{}, fmt.Errorf("open repository: %w", err)
	}
	defer repo.Close()
	f, err := os.Create(target)
	if err != nil {
		return Phase{}, err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return Phase{}, err
	}
	hv := fake.New(nil)
	defer hv.Close()
	vm, err := hv.AddFileVM("restored", target)
	if err != nil {
		return Phase{}, err
	}
	if err := hv.PowerOff(ctx, vm.ID); err != nil {
		return Phase{}, err
	}
	svc, err := backup.New(backup.Config{Hypervisor: hv, Repository: repo, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return Phase{}, err
	}
	if cpuProfile != "" {
		stop, err := startProfile(cpuProfile)
		if err != nil {
			return Phase{}, err
		}
		defer stop()
	}
	job, err := svc.RestoreInPlace(ctx, point, restore.InPlaceOptions{VMID: vm.ID})
	if err == nil {
		err = job.Err
	}
	if err == nil && job.VMs[0].Err != nil {
		err = job.VMs[0].Err
	}
	if err != nil {
		return Phase{}, fmt.Errorf("restore %s: %w", point, err)
	}
	p := Phase{Step: stepRestore, Read: job.VMs[0].BytesRead}
	if res := job.VMs[0].Restore; res != nil && len(res.Disks) > 0 {
		d := res.Disks[0]
		p.Note = fmt.Sprintf("%s, %d chunks written, %d skipped, %s written", d.Method, d.ChunksWritten, d.ChunksSkipped, mib(d.BytesWritten))
	}
	return p, nil
}
