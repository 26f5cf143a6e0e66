// Command incremental-backup backs up a VM twice with guest writes in
// between: the first backup is full, the second reads only the blocks that
// the hypervisor's change tracking reports changed, and stores only new
// chunks.
//
//	go run ./examples/incremental-backup [-repo URL] [-size BYTES]
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
	req := backup.Request{VMIDs: []string{lab.VM.ID}}
	for i := range 2 {
		if i > 0 {
			// The guest rewrites 1 % of its disk's 64 KiB blocks.
			if err := lab.GuestWrites(ctx, 0.01, int64(i)); err != nil {
				return err
			}
		}
		job, err := svc.Backup(ctx, req)
		if err != nil {
			return err
		}
		r := job.VMs[0]
		fmt.Printf("backup %d: %-11s read %9s stored %9s in %6s  (%s)\n", i+1, r.Kind,
			demo.Bytes(r.BytesRead), demo.Bytes(r.BytesStored), r.Duration.Round(1e6), r.Reason)
	}
	rpo, at, err := svc.RPO(ctx, lab.VM.ID)
	if err != nil {
		return err
	}
	fmt.Printf("RPO of %s: %s (newest point at %s)\n", lab.VM.Name, rpo.Round(1e6), at.Format("15:04:05"))
	return nil
}
