// Command full-backup backs up every disk of a VM whole: one job, one
// restore point. It runs on the fake hypervisor with a generated disk and
// a temporary file:// repository unless told otherwise.
//
//	go run ./examples/full-backup [-repo URL] [-size BYTES]
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/vmbackup/vmbackup/backup"
	"github.com/vmbackup/vmbackup/hypervisor"
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

	// 1. One Service per hypervisor and repository.
	svc, err := backup.New(backup.Config{Hypervisor: lab.HV, Repository: repo})
	if err != nil {
		return err
	}
	// 2. One job: a full backup of one VM, application-consistent if the
	// guest can quiesce, else crash-consistent (recorded in the point).
	job, err := svc.Backup(ctx, backup.Request{
		VMIDs:              []string{lab.VM.ID},
		ForceFull:          true,
		Manual:             true,
		Consistency:        hypervisor.ApplicationConsistent,
		AllowCrashFallback: true,
	})
	if err != nil {
		return err
	}
	// 3. What it did.
	r := job.VMs[0]
	fmt.Printf("job %s: %s\n", job.ID, job.State)
	fmt.Printf("restore point %s of %s: %s (%s), %s consistent (%s)\n", r.PointID, r.VMName, r.Kind, r.Reason, r.Consistency, r.Note)
	fmt.Printf("read %s of %s in %s, stored %s new\n", demo.Bytes(r.BytesRead), demo.Bytes(r.BytesTotal), r.Duration.Round(1e6), demo.Bytes(r.BytesStored))
	return nil
}
