package qemu_test

import (
	"context"
	"fmt"
	"log"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/qemu"
)

// An embedder defines its VMs once per process and hands the backend to
// the engine. A VM the backend starts itself:
func Example() {
	ctx := context.Background()
	hv, err := qemu.New(qemu.Options{ImageDir: "/var/lib/vms"})
	if err != nil {
		log.Fatal(err)
	}
	defer hv.Close() // quits the QEMUs it started, saving their bitmaps

	vm, err := hv.Define(ctx, qemu.VMSpec{
		Name:      "web",
		Machine:   "q35",
		CPUs:      2,
		MemoryB:   2 << 30,
		Disks:     []qemu.DiskSpec{{Image: "/var/lib/vms/web-0.qcow2", BootOrder: 1}},
		ExtraArgs: []string{"-accel", "kvm"},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := hv.Start(ctx, vm.ID); err != nil {
		log.Fatal(err)
	}
	snap, err := hv.Snapshot(ctx, vm.ID, hypervisor.SnapshotOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer snap.Release(context.WithoutCancel(ctx))
	d, err := snap.OpenDisk(ctx, vm.Disks[0].ID)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()
	fmt.Println(d.Size(), d.(hypervisor.ChangeTracker).ChangeToken())
}

// A QEMU started by someone else (a unit file, a script) is attached by its
// QMP socket; its disks are named by their qcow2 format nodes.
func ExampleHypervisor_Define_attach() {
	ctx := context.Background()
	hv, err := qemu.New(qemu.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer hv.Close() // detaches; the QEMU keeps running
	_, err = hv.Define(ctx, qemu.VMSpec{
		Name:        "db",
		QMPSocket:   "/run/qemu/db.qmp",
		AgentSocket: "/run/qemu/db.qga", // enables application-consistent snapshots
		Disks:       []qemu.DiskSpec{{ID: "system", Image: "/var/lib/vms/db.qcow2", Node: "drive-system"}},
	})
	if err != nil {
		log.Fatal(err)
	}
}
