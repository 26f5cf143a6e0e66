package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/vmbackup/vmbackup/hypervisor/ave/avetest"
)

func flags(kind, url, vm string) HypervisorFlags {
	return HypervisorFlags{Kind: &kind, AOCURL: &url, VMID: &vm}
}

// TestNewLabAVE runs the examples' lab against the AOC test server: the VM
// is found, credentials come from the environment, and the disk sums read
// through a snapshot match what the guest wrote.
func TestNewLabAVE(t *testing.T) {
	ctx := context.Background()
	srv := avetest.NewServer(avetest.Options{})
	defer srv.Close()
	const size = 2 << 20
	vm, err := srv.AddVM(avetest.VMSpec{Name: "web", Disks: []avetest.DiskSpec{{Size: size}}})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("vmbackup"), 8192)
	if err := srv.GuestWrite(vm.ID, vm.DiskIDs[0], 1<<20, data); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	copy(want[1<<20:], data)

	t.Setenv("AOC_USERNAME", avetest.DefaultUsername)
	t.Setenv("AOC_PASSWORD", avetest.DefaultPassword)
	lab, err := flags("ave", srv.URL(), vm.ID).NewLab(ctx, t.TempDir(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	if lab.VM.ID != vm.ID || lab.WriteDisk != nil {
		t.Fatalf("lab VM %q (write access %v), want %q without guest writes", lab.VM.ID, lab.WriteDisk != nil, vm.ID)
	}
	if err := lab.GuestWrites(ctx, 0.1, 1); err != nil {
		t.Fatalf("GuestWrites without guest access: %v", err)
	}
	if err := lab.Verify(ctx, vm.ID, [][32]byte{sha256.Sum256(want)}); err != nil {
		t.Fatal(err)
	}
	if n := srv.Counts().Snapshots; n != 0 {
		t.Errorf("%d snapshots left on the server after Sums", n)
	}
}

func TestNewLabErrors(t *testing.T) {
	for _, tc := range []struct {
		f    HypervisorFlags
		want string
	}{
		{flags("ave", "", "vm-1"), "-aoc-url"},
		{flags("ave", "http://127.0.0.1:1", ""), "-vm"},
		{flags("vmware", "", ""), `-hypervisor "vmware"`},
	} {
		_, err := tc.f.NewLab(context.Background(), t.TempDir(), 1<<20, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewLab(%s) = %v, want an error naming %s", *tc.f.Kind, err, tc.want)
		}
	}
}
