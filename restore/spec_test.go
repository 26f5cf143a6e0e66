package restore_test

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

func TestSpec(t *testing.T) {
	src := hypervisor.VM{
		ID: "vm-7", Name: "web", CPUs: 2, MemoryB: 4 << 30, Firmware: "uefi",
		Placement: hypervisor.Placement{Cluster: "c1", Host: "h1", Storage: "s1"},
		NICs: []hypervisor.NIC{
			{ID: "nic-1", MAC: "52:54:00:00:00:01", Model: "virtio", Network: "vlan-10", Connected: true},
			{ID: "nic-2", MAC: "52:54:00:00:00:02", Model: "e1000", Network: "vlan-99", Connected: false},
		},
		Raw: json.RawMessage(`{"x":1}`),
	}
	point := &repository.Manifest{ID: "p1", Disks: []repository.DiskRecord{
		{ID: "disk-1", Name: "root", Size: 10 << 30, Bus: "virtio", BootOrder: 1, Index: "ignored", ChangeToken: "ignored"},
		{ID: "disk-2", Name: "data", Size: 1 << 30, Bus: "scsi"},
	}}
	disks := []hypervisor.DiskInfo{{Name: "root", Size: 10 << 30, Bus: "virtio", BootOrder: 1}, {Name: "data", Size: 1 << 30, Bus: "scsi"}}
	tests := []struct {
		name string
		opts *restore.RebuildOptions
		want hypervisor.CreateSpec
	}{
		{
			name: "defaults keep the source but not its MACs",
			opts: nil,
			want: hypervisor.CreateSpec{
				Name: "web-restored", CPUs: 2, MemoryB: 4 << 30, Firmware: "uefi", Placement: src.Placement, Disks: disks,
				NICs: []hypervisor.NIC{{Model: "virtio", Network: "vlan-10", Connected: true}, {Model: "e1000", Network: "vlan-99"}},
				Raw:  src.Raw,
			},
		},
		{
			name: "overrides",
			opts: &restore.RebuildOptions{
				Name: "web-2", CPUs: 8, MemoryB: 16 << 30, Placement: hypervisor.Placement{Cluster: "c2"},
				NetworkMap: map[string]string{"vlan-10": "vlan-20"}, DisconnectNICs: true, KeepMACs: true,
			},
			want: hypervisor.CreateSpec{
				Name: "web-2", CPUs: 8, MemoryB: 16 << 30, Firmware: "uefi", Placement: hypervisor.Placement{Cluster: "c2"}, Disks: disks,
				NICs: []hypervisor.NIC{
					{MAC: "52:54:00:00:00:01", Model: "virtio", Network: "vlan-20"},
					{MAC: "52:54:00:00:00:02", Model: "e1000", Network: "vlan-99"},
				},
				Raw: src.Raw,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, restore.Spec(point, src, tt.opts)); diff != "" {
				t.Errorf("Spec (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPointVM(t *testing.T) {
	vm := hypervisor.VM{ID: "vm-1", Name: "a", Disks: []hypervisor.DiskInfo{{ID: "disk-1", Size: 1}}}
	raw, _ := json.Marshal(vm)
	got, err := restore.PointVM(&repository.Manifest{ID: "p", VM: raw})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vm, got); diff != "" {
		t.Errorf("PointVM (-want +got):\n%s", diff)
	}
	if _, err := restore.PointVM(&repository.Manifest{ID: "p"}); err == nil {
		t.Error("a point without a vm configuration gave no error")
	}
	if _, err := restore.PointVM(&repository.Manifest{ID: "p", VM: json.RawMessage("{")}); err == nil {
		t.Error("a garbled vm configuration gave no error")
	}
}
