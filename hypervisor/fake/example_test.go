package fake_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
)

// A fake VM with a sparse 100 GiB disk costs only what is written to it.
// Snapshots keep what they saw; change tracking reports what was written
// since, at the configured granularity.
func ExampleNew() {
	ctx := context.Background()
	hv := fake.New(&fake.Options{Granularity: 4096})
	vm, err := hv.AddVM(hypervisor.VM{Name: "db-1", Disks: []hypervisor.DiskInfo{{Size: 100 << 30}}})
	if err != nil {
		log.Fatal(err)
	}
	hv.WriteDisk(ctx, vm.ID, "disk-1", 0, []byte("v1"))

	s1, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s1.Release(ctx)
	d1, _ := s1.OpenDisk(ctx, "disk-1")
	token := d1.(hypervisor.ChangeTracker).ChangeToken()

	hv.WriteDisk(ctx, vm.ID, "disk-1", 0, []byte("v2"))
	hv.WriteDisk(ctx, vm.ID, "disk-1", 1<<30, []byte("new"))

	s2, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Release(ctx)
	d2, _ := s2.OpenDisk(ctx, "disk-1")
	changed, _ := d2.(hypervisor.ChangeTracker).ChangedExtents(ctx, token)

	old := make([]byte, 2)
	d1.ReadAt(old, 0)
	fmt.Printf("first snapshot reads %q\n", old)
	fmt.Println("changed since:", changed)
	// Output:
	// first snapshot reads "v1"
	// changed since: [{0 4096} {1073741824 4096}]
}

// Faults make chosen calls fail: here the second snapshot of a VM, once.
func ExampleHypervisor_Inject() {
	ctx := context.Background()
	hv := fake.New(nil)
	vm, _ := hv.AddVM(hypervisor.VM{Name: "web-1", Disks: []hypervisor.DiskInfo{{Size: 1 << 30}}})
	hv.Inject(fake.Fault{Op: fake.OpSnapshot, VMID: vm.ID, After: 1, Err: errors.New("storage busy")})

	for i := 1; i <= 3; i++ {
		s, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
		if err != nil {
			fmt.Printf("snapshot %d: %v\n", i, err)
			continue
		}
		s.Release(ctx)
		fmt.Printf("snapshot %d: ok\n", i)
	}
	fmt.Println("pending faults:", len(hv.PendingFaults()), "open snapshots:", hv.OpenSnapshots())
	// Output:
	// snapshot 1: ok
	// snapshot 2: fake: snapshot of vm "vm-1": injected fault: storage busy
	// snapshot 3: ok
	// pending faults: 0 open snapshots: 0
}

// A VM whose disk is a raw image file: guest writes go to the file, and a
// snapshot keeps what it saw in memory.
func ExampleHypervisor_AddFileVM() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "fake-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	image := filepath.Join(dir, "root.raw")
	if err := os.WriteFile(image, []byte("hello, disk"), 0o600); err != nil {
		log.Fatal(err)
	}
	if err := os.Truncate(image, 64<<20); err != nil { // sparse 64 MiB
		log.Fatal(err)
	}

	hv := fake.New(nil)
	defer hv.Close()
	vm, err := hv.AddFileVM("files-1", image)
	if err != nil {
		log.Fatal(err)
	}
	s, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer s.Release(ctx)
	hv.WriteDisk(ctx, vm.ID, "disk-1", 0, []byte("HELLO"))

	d, _ := s.OpenDisk(ctx, "disk-1")
	snap := make([]byte, 11)
	d.ReadAt(snap, 0)
	file, _ := os.ReadFile(image)
	fmt.Printf("%s: %d bytes; snapshot %q, file %q\n", vm.Disks[0].Name, vm.Disks[0].Size, snap, file[:11])
	// Output:
	// root.raw: 67108864 bytes; snapshot "hello, disk", file "HELLO, disk"
}
