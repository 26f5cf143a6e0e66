// Command quickstart shows vmbackup end to end in a few seconds, with
// nothing to set up: a VM with a realistic disk on the fake hypervisor, a
// full backup, guest writes, an incremental backup, a restore in place, a
// rebuild as a new VM, and a byte-for-byte check of every restore.
//
//	go run ./examples/quickstart [-repo URL] [-size BYTES] [-v]
//
// By default the repository is a file:// directory in a temporary
// directory that is removed at the end.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"time"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/internal/demo"
	"github.com/vmbackup/vmbackup/restore"
)

var (
	repoURL = flag.String("repo", "", "repository URL (file://, mem://, s3://...); empty: a temporary file:// repository")
	size    = flag.Int64("size", 256<<20, "disk size in bytes")
	hvFlags = demo.RegisterHypervisorFlags() // -hypervisor fake|ave, -aoc-url, -vm
	verbose = flag.Bool("v", false, "log what the engine does")
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

// newLab builds the hypervisor and the VM to back up. Replace it to run
// the quickstart on another hypervisor.
func newLab(ctx context.Context, dir string) (*demo.Lab, error) {
	return hvFlags.NewLab(ctx, dir, *size, 1)
}

func run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "vmbackup-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// 1. A hypervisor with a VM, and a repository.
	t0 := time.Now()
	lab, err := newLab(ctx, dir)
	if err != nil {
		return err
	}
	defer lab.Close()
	repo, url, err := demo.OpenRepository(ctx, *repoURL, dir)
	if err != nil {
		return err
	}
	defer repo.Close()
	vm := lab.VM
	fmt.Printf("VM %s (%s): %d disk(s), %s, image made in %s\nrepository %s (chunks of %s, %s)\n\n",
		vm.Name, vm.ID, len(vm.Disks), demo.Bytes(vm.Disks[0].Size), time.Since(t0).Round(time.Millisecond), url,
		demo.Bytes(int64(repo.Config().ChunkSize)), repo.Config().Codec)

	// 2. The engine.
	logger := slog.New(slog.DiscardHandler)
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	svc, err := backup.New(backup.Config{Hypervisor: lab.HV, Repository: repo, Logger: logger})
	if err != nil {
		return err
	}
	if bar := demo.ProgressBar(os.Stdout); bar != nil {
		defer svc.Subscribe(bar)()
	}

	// 3. Full backup, guest writes, incremental backup.
	full, err := backupOnce(ctx, svc, vm.ID, "full backup")
	if err != nil {
		return err
	}
	sumFull, err := lab.Sums(ctx, vm.ID)
	if err != nil {
		return err
	}
	if err := lab.GuestWrites(ctx, 0.01, 7); err != nil {
		return err
	}
	incr, err := backupOnce(ctx, svc, vm.ID, "incremental")
	if err != nil {
		return err
	}
	sumIncr, err := lab.Sums(ctx, vm.ID)
	if err != nil {
		return err
	}

	// 4. Restore the full backup in place (powering the VM off), check it.
	t := time.Now()
	job, err := svc.RestoreInPlace(ctx, full.PointID, restore.InPlaceOptions{PowerOff: true})
	if err != nil {
		return err
	}
	if err := lab.Verify(ctx, vm.ID, sumFull); err != nil {
		return fmt.Errorf("restore in place: %w", err)
	}
	r := job.VMs[0]
	fmt.Printf("%-13s %7s  wrote %9s (%s), every byte verified\n", "in place", time.Since(t).Round(time.Millisecond),
		demo.Bytes(r.BytesWritten), r.Restore.Disks[0].Method)

	// 5. Rebuild the incremental as a new VM, check it.
	t = time.Now()
	job, err = svc.Rebuild(ctx, incr.PointID, restore.RebuildOptions{Name: vm.Name + "-copy", DisconnectNICs: true})
	if err != nil {
		return err
	}
	r = job.VMs[0]
	if err := lab.Verify(ctx, r.VMID, sumIncr); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	d := time.Since(t)
	fmt.Printf("%-13s %7s  wrote %9s %9s  new VM %s, every byte verified\n", "rebuild", d.Round(time.Millisecond),
		demo.Bytes(r.BytesWritten), demo.Rate(r.BytesWritten, d), r.VMID)

	// 6. Summary.
	logical := 2 * vm.Disks[0].Size
	stored := full.BytesStored + incr.BytesStored
	fmt.Printf("\n2 restore points of a %s disk take %s in the repository (%.1fx smaller than 2 raw copies; compression %.2fx)\n",
		demo.Bytes(vm.Disks[0].Size), demo.Bytes(stored), float64(logical)/float64(max(stored, 1)),
		float64(full.BytesNew+incr.BytesNew)/float64(max(stored, 1)))
	fmt.Printf("done in %s\n", time.Since(t0).Round(time.Millisecond))
	return nil
}

func backupOnce(ctx context.Context, svc *backup.Service, vmID, label string) (backup.VMResult, error) {
	t := time.Now()
	job, err := svc.Backup(ctx, backup.Request{VMIDs: []string{vmID}, Manual: true})
	if err != nil {
		return backup.VMResult{}, err
	}
	r := job.VMs[0]
	d := time.Since(t)
	fmt.Printf("%-13s %7s  read %10s %9s  stored %9s  %s (%s)\n", label, d.Round(time.Millisecond),
		demo.Bytes(r.BytesRead), demo.Rate(r.BytesRead, d), demo.Bytes(r.BytesStored), r.Kind, r.Reason)
	return r, nil
}
