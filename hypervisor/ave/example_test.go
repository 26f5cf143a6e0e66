package ave_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/ave"
	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
)

// Example wires the backend to an AOC (here the avetest server, as a
// plugin's tests would) and takes and reads a snapshot. In a program, the
// Hypervisor goes into backup.Config{Hypervisor: hv, Repository: repo}.
func Example() {
	srv := avetest.NewServer(avetest.Options{})
	defer srv.Close()
	vm, _ := srv.AddVM(avetest.VMSpec{Name: "web-1", Labels: map[string]string{"tier": "gold"},
		Disks: []avetest.DiskSpec{{Size: 1 << 20}}})
	srv.GuestWrite(vm.ID, vm.DiskIDs[0], 4096, []byte("hello"))

	hv, err := ave.New(ave.Options{
		BaseURL:          srv.URL(),
		Username:         avetest.DefaultUsername, // in a program: ave.OptionsFromEnv
		Password:         avetest.DefaultPassword,
		TaskPollInterval: 10 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	vms, err := hv.ListVMs(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(vms[0].Name, vms[0].Labels, vms[0].Disks[0].Size)

	snap, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{Consistency: hypervisor.ApplicationConsistent, AllowCrashFallback: true})
	if err != nil {
		log.Fatal(err)
	}
	defer snap.Release(context.WithoutCancel(ctx))
	fmt.Println(snap.Info().Consistency, "-", snap.Info().Note)
	disk, err := snap.OpenDisk(ctx, vm.DiskIDs[0])
	if err != nil {
		log.Fatal(err)
	}
	defer disk.Close()
	p := make([]byte, 5)
	disk.ReadAt(p, 4096)
	_, tracks := disk.(hypervisor.ChangeTracker)
	fmt.Printf("%s, change tracking: %v\n", p, tracks)
	// Output:
	// web-1 map[tier:gold] 1048576
	// crash - crash-consistent instead of file-system-consistent: guest tools are NOT_RUNNING
	// hello, change tracking: false
}
