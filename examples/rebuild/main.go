// Command rebuild backs up a VM and creates a new VM from the restore
// point: a new name, NICs disconnected so it cannot clash with the
// original, more memory, and its disks written from the repository.
//
//	go run ./examples/rebuild [-repo URL] [-size BYTES]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/internal/demo"
	"github.com/vmbackup/vmbackup/restore"
)

var (
	repoURL = flag.String("repo", "", "repository URL; empty: a temporary file:// repository")
	size    = flag.Int64("size", 64<<20, "disk size in bytes of the generated VM")
	hvFlags = demo.RegisterHypervisorFlags() // -hypervisor fake|ave, -aoc-url, -vm
)

func main() {
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

// newLab builds the hypervisor and the VM to back up.
func newLab(ctx context.Context, dir string) (*demo.Lab, error) {
	return hvFlags.NewLab(ctx, dir, *size, 1)
}

func run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "vmbackup-example-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lab, err := newLab(ctx, dir)
	if err != nil {
		return err
	}
	defer lab.Close()
	repo, _, err := demo.OpenRepository(ctx, *repoURL, dir)
	if err != nil {
		return err
	}
	defer repo.Close()
	svc, err := backup.New(backup.Config{Hypervisor: lab.HV, Repository: repo})
	if err != nil {
		return err
	}

	job, err := svc.Backup(ctx, backup.Request{VMIDs: []string{lab.VM.ID}})
	if err != nil {
		return err
	}
	point := job.VMs[0].PointID
	want, err := lab.Sums(ctx, lab.VM.ID)
	if err != nil {
		return err
	}

	job, err = svc.Rebuild(ctx, point, restore.RebuildOptions{
		Name:           lab.VM.Name + "-rebuilt",
		MemoryB:        2 * lab.VM.MemoryB,
		DisconnectNICs: true,
		PowerOn:        true,
	})
	if err != nil {
		return err
	}
	r := job.VMs[0]
	if err := lab.Verify(ctx, r.VMID, want); err != nil {
		return err
	}
	vm := r.Restore.VM
	fmt.Printf("rebuilt point %s as VM %s (%s): %d CPUs, %s memory, %s\n", point, vm.Name, vm.ID, vm.CPUs, demo.Bytes(vm.MemoryB), vm.Power)
	for _, d := range r.Restore.Disks {
		fmt.Printf("disk %s -> %s: wrote %s in %d chunks, skipped %d zero chunks\n", d.ID, d.TargetID, demo.Bytes(d.BytesWritten), d.ChunksWritten, d.ChunksSkipped)
	}
	fmt.Printf("in %s; every byte verified\n", r.Duration.Round(1e6))
	return nil
}
