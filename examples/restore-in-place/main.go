// Command restore-in-place backs up a VM, lets the guest write, then puts
// the VM's disks back as they were: the VM is shut down, and only the
// blocks that changed since the restore point are written.
//
//	go run ./examples/restore-in-place [-repo URL] [-size BYTES]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

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

	// 1. A restore point, and the disks' checksums at that time.
	job, err := svc.Backup(ctx, backup.Request{VMIDs: []string{lab.VM.ID}})
	if err != nil {
		return err
	}
	point := job.VMs[0].PointID
	want, err := lab.Sums(ctx, lab.VM.ID)
	if err != nil {
		return err
	}
	// 2. The guest writes 5 % of its blocks.
	if err := lab.GuestWrites(ctx, 0.05, 1); err != nil {
		return err
	}
	// 3. Restore in place: shut the VM down (forced after 30 s), write what
	// differs, start it again.
	job, err = svc.RestoreInPlace(ctx, point, restore.InPlaceOptions{PowerOff: true, ShutdownTimeout: 30 * time.Second, Start: true})
	if err != nil {
		return err
	}
	if err := lab.Verify(ctx, lab.VM.ID, want); err != nil {
		return err
	}
	r := job.VMs[0]
	for _, d := range r.Restore.Disks {
		fmt.Printf("disk %s: %s, wrote %d chunks (%s), %d already equal\n", d.ID, d.Method, d.ChunksWritten, demo.Bytes(d.BytesWritten), d.ChunksSkipped)
	}
	fmt.Printf("restored point %s onto %s in %s; VM is %s; every byte verified\n", point, r.VMName, r.Duration.Round(1e6), r.Restore.VM.Power)
	return nil
}
