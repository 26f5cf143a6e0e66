package hypervisor_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
)

// backupDisk is the kind of code an embedder tests with the fake: it knows
// only the contract. It reads what changed since token (or, without a usable
// token, what is allocated), and returns how many bytes it read and the
// token for next time.
func backupDisk(ctx context.Context, hv hypervisor.Hypervisor, vmID, token string) (read int64, next string, err error) {
	snap, err := hv.Snapshot(ctx, vmID, hypervisor.SnapshotOptions{
		Consistency:        hypervisor.ApplicationConsistent,
		AllowCrashFallback: true,
	})
	if err != nil {
		return 0, "", fmt.Errorf("snapshot: %w", err)
	}
	// Release on every path, even if ctx is cancelled by then.
	defer snap.Release(context.WithoutCancel(ctx))

	info := snap.Info()
	disk, err := snap.OpenDisk(ctx, info.VM.Disks[0].ID)
	if err != nil {
		return 0, "", fmt.Errorf("open disk: %w", err)
	}
	defer disk.Close()

	extents := []hypervisor.Extent{{Offset: 0, Length: disk.Size()}}
	if er, ok := disk.(hypervisor.ExtentReporter); ok {
		if extents, err = er.AllocatedExtents(ctx); err != nil {
			return 0, "", err
		}
	}
	ct, tracked := disk.(hypervisor.ChangeTracker)
	if tracked && token != "" {
		changed, err := ct.ChangedExtents(ctx, token)
		switch {
		case errors.Is(err, hypervisor.ErrTokenInvalid):
			fmt.Println("token invalid, full backup")
		case err != nil:
			return 0, "", err
		default:
			extents = changed
		}
	}
	buf := make([]byte, 64<<10)
	for _, e := range extents {
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := disk.ReadAt(buf[:n], off); err != nil {
				return read, "", fmt.Errorf("read at %d: %w", off, err)
			}
			read += n
		}
	}
	if tracked {
		next = ct.ChangeToken()
	}
	return read, next, nil
}

// A test harness wires the fake in place of a real hypervisor: it adds a VM
// with a sparse 10 GiB disk, plays the guest's writes, resets change
// tracking as a crash would, injects a fault, and checks that no snapshot
// was leaked.
func Example_testHarness() {
	ctx := context.Background()
	hv := fake.New(&fake.Options{Granularity: 64 << 10})
	defer hv.Close()
	vm, err := hv.AddVM(hypervisor.VM{
		Name:  "web-1",
		Disks: []hypervisor.DiskInfo{{Size: 10 << 30}},
	})
	if err != nil {
		log.Fatal(err)
	}
	disk := vm.Disks[0].ID
	guestWrite := func(off int64, s string) {
		if err := hv.WriteDisk(ctx, vm.ID, disk, off, []byte(s)); err != nil {
			log.Fatal(err)
		}
	}

	guestWrite(0, "boot sector")
	guestWrite(5<<30, "a log line")
	read, token, err := backupDisk(ctx, hv, vm.ID, "")
	fmt.Println("first backup read", read>>10, "KiB", err)

	guestWrite(5<<30+100, "another log line")
	read, token, err = backupDisk(ctx, hv, vm.ID, token)
	fmt.Println("incremental read", read>>10, "KiB", err)

	hv.ResetChangeTracking(vm.ID)
	read, _, err = backupDisk(ctx, hv, vm.ID, token)
	fmt.Println("after a reset read", read>>10, "KiB", err)

	hv.Inject(fake.Fault{Op: fake.OpRead, VMID: vm.ID, After: 1})
	_, _, err = backupDisk(ctx, hv, vm.ID, "")
	fmt.Println(errors.Is(err, fake.ErrInjected), "open snapshots:", hv.OpenSnapshots())

	// Output:
	// first backup read 128 KiB <nil>
	// incremental read 64 KiB <nil>
	// token invalid, full backup
	// after a reset read 128 KiB <nil>
	// true open snapshots: 0
}
