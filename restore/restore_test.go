package restore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	_ "gocloud.dev/blob/memblob"

	"github.com/vmbackup/vmbackup/hypervisor"
	"github.com/vmbackup/vmbackup/hypervisor/fake"
	"github.com/vmbackup/vmbackup/internal/testimage"
	"github.com/vmbackup/vmbackup/repository"
	"github.com/vmbackup/vmbackup/restore"
)

// extentWriter wraps the fake so that its writable disks report allocated
// extents (all of a disk that was written, nothing of one that was not),
// and counts reads of the target.
type extentWriter struct {
	*fake.Hypervisor
	empty map[string]bool // disk ids known to be empty
	reads atomic.Int64
}

type extentDisk struct {
	hypervisor.WritableDisk
	w     *extentWriter
	empty bool
}

func (d *extentDisk) AllocatedExtents(ctx context.Context) ([]hypervisor.Extent, error) {
	if d.empty {
		return nil, nil
	}
	return []hypervisor.Extent{{Offset: 0, Length: d.Size()}}, nil
}

func (d *extentDisk) ReadAt(p []byte, off int64) (int, error) {
	d.w.reads.Add(int64(len(p)))
	return d.WritableDisk.ReadAt(p, off)
}

func (h *extentWriter) OpenDiskForWrite(ctx context.Context, vmID, diskID string) (hypervisor.WritableDisk, error) {
	w, err := h.Hypervisor.OpenDiskForWrite(ctx, vmID, diskID)
	if err != nil {
		return nil, err
	}
	return &extentDisk{WritableDisk: w, w: h, empty: h.empty[vmID+"/"+diskID]}, nil
}

type writerAt struct {
	hv         *fake.Hypervisor
	vmID, disk string
}

func (w writerAt) WriteAt(p []byte, off int64) (int, error) {
	return len(p), w.hv.WriteDisk(context.Background(), w.vmID, w.disk, off, p)
}

// point backs up the VM's first disk by hand (the engine lives in package
// backup), returning the manifest and the disk's content.
func point(t *testing.T, repo *repository.Repository, hv *fake.Hypervisor, vm hypervisor.VM) (*repository.Manifest, []byte) {
	t.Helper()
	ctx := context.Background()
	d := vm.Disks[0]
	data := make([]byte, d.Size)
	if err := hv.ReadDisk(ctx, vm.ID, d.ID, 0, data); err != nil {
		t.Fatal(err)
	}
	pw, err := repo.NewPointWriter(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs := repo.Config().ChunkSize
	idx := repository.NewIndex(d.Size, cs)
	for i := 0; i < idx.Len(); i++ {
		p := data[i*cs : min((i+1)*cs, len(data))]
		if bytes.Count(p, []byte{0}) == len(p) {
			continue
		}
		id := repo.HashChunk(p)
		if _, err := pw.PutChunk(ctx, id, p); err != nil {
			t.Fatal(err)
		}
		idx.Set(i, id)
	}
	m := &repository.Manifest{VMID: vm.ID, VMName: vm.Name, Kind: "full", Consistency: "crash",
		Disks: []repository.DiskRecord{{ID: d.ID, Size: d.Size}}}
	if err := pw.Commit(ctx, m, map[string]*repository.Index{d.ID: idx}); err != nil {
		t.Fatal(err)
	}
	return m, data
}

func TestInPlaceSkipsUnallocatedTarget(t *testing.T) {
	ctx := context.Background()
	repo, err := repository.Init(ctx, "mem://", &repository.InitOptions{ChunkSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	hv := &extentWriter{Hypervisor: fake.New(nil), empty: map[string]bool{}}
	defer hv.Close()
	src, err := hv.AddVM(hypervisor.VM{Name: "src", Disks: []hypervisor.DiskInfo{{Size: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Generate(ctx, writerAt{hv.Hypervisor, src.ID, "disk-1"}, 4<<20, 3); err != nil {
		t.Fatal(err)
	}
	m, want := point(t, repo, hv.Hypervisor, src)
	dst, err := hv.AddVM(hypervisor.VM{Name: "dst", Power: hypervisor.PowerStopped, Disks: []hypervisor.DiskInfo{{Size: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	hv.empty[dst.ID+"/disk-1"] = true

	res, err := restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: dst.ID})
	if err != nil {
		t.Fatal(err)
	}
	if hv.reads.Load() != 0 {
		t.Errorf("an empty target was read (%d bytes)", hv.reads.Load())
	}
	got := make([]byte, len(want))
	if err := hv.ReadDisk(ctx, dst.ID, "disk-1", 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("restored disk differs from the point")
	}
	// The engine finds the target empty by itself: a fresh disk's restore.
	if d := res.Disks[0]; d.Method != restore.MethodFresh || d.Reason == "" || d.BytesWritten >= d.Size {
		t.Errorf("method %s (%q) wrote %d of %d bytes; want %s, zero blocks skipped", d.Method, d.Reason, d.BytesWritten, d.Size, restore.MethodFresh)
	}

	// Restoring again onto the now allocated disk reads it and writes
	// nothing, also with buffers for less than one chunk.
	delete(hv.empty, dst.ID+"/disk-1")
	res, err = restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: dst.ID, Options: restore.Options{MaxInFlightBytes: 1, Workers: 4}})
	if err != nil {
		t.Fatal(err)
	}
	if hv.reads.Load() == 0 || res.BytesWritten != 0 {
		t.Errorf("second restore read %d and wrote %d bytes; want a read and no write", hv.reads.Load(), res.BytesWritten)
	}

	// A target promised zeroed is neither read nor written where zero.
	empty, err := hv.AddVM(hypervisor.VM{Name: "empty", Power: hypervisor.PowerStopped, Disks: []hypervisor.DiskInfo{{Size: 4 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	before := hv.reads.Load()
	res, err = restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: empty.ID, TargetZeroed: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := hv.ReadDisk(ctx, empty.ID, "disk-1", 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || hv.reads.Load() != before || res.Disks[0].Method != restore.MethodFresh {
		t.Errorf("zeroed target: equal %v, %d bytes read, method %s", bytes.Equal(got, want), hv.reads.Load()-before, res.Disks[0].Method)
	}

	// A running VM is refused, an unknown VM is not found.
	if _, err := restore.InPlace(ctx, hv, repo, m, nil); !errors.Is(err, restore.ErrVMRunning) {
		t.Errorf("restore onto the running source: %v, want ErrVMRunning", err)
	}
	if _, err := restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: "nope"}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("restore onto an unknown vm: %v, want ErrNotFound", err)
	}
}

// TestInPlaceOntoPartlyAllocatedFile restores onto a file-backed disk of
// the fake (which reports its allocated extents) that holds other data in
// some places and holes elsewhere: chunks over holes are written without
// reading the target, chunks over data are compared, and where the point
// has zeros the target's old data is cleared.
func TestInPlaceOntoPartlyAllocatedFile(t *testing.T) {
	ctx := context.Background()
	const cs = 64 << 10
	const size = 4 << 20
	repo, err := repository.Init(ctx, "mem://", &repository.InitOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	defer repo.Close()
	hv := fake.New(nil)
	defer hv.Close()
	src, err := hv.AddVM(hypervisor.VM{Name: "src", Disks: []hypervisor.DiskInfo{{Size: size}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := testimage.Generate(ctx, writerAt{hv, src.ID, "disk-1"}, size, 5); err != nil {
		t.Fatal(err)
	}
	m, want := point(t, repo, hv, src)

	path := filepath.Join(t.TempDir(), "target.raw")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	dst, err := hv.AddFileVM("dst", path)
	if err != nil {
		t.Fatal(err)
	}
	// Old data in the first and last 256 KiB and, unaligned, across a
	// chunk boundary in the middle; holes elsewhere.
	junk := bytes.Repeat([]byte{0x5a}, 256<<10)
	for _, off := range []int64{0, size - 256<<10, 2<<20 - 1000} {
		if err := hv.WriteDisk(ctx, dst.ID, "disk-1", off, junk[:min(len(junk), int(size-off))]); err != nil {
			t.Fatal(err)
		}
	}
	// The case that matters most: old data where the point has zeros.
	zeroUnderJunk := false
	for _, off := range []int64{0, size - 256<<10, 2<<20 - 1000} {
		for b := (off + cs - 1) / cs * cs; b+cs <= min(off+256<<10, size); b += cs {
			zeroUnderJunk = zeroUnderJunk || bytes.Count(want[b:b+cs], []byte{0}) == cs
		}
	}
	if !zeroUnderJunk {
		t.Fatal("the test image has no zero chunk under the old data; pick other offsets or seed")
	}
	if err := hv.PowerOff(ctx, dst.ID); err != nil {
		t.Fatal(err)
	}
	res, err := restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: dst.ID})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if err := hv.ReadDisk(ctx, dst.ID, "disk-1", 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("restored disk differs from the point")
	}
	if d := res.Disks[0]; d.Method != restore.MethodCompare {
		t.Errorf("method %s (%s), want %s: the target holds data", d.Method, d.Reason, restore.MethodCompare)
	}
	// Restoring again writes nothing: everything is equal now.
	if res, err = restore.InPlace(ctx, hv, repo, m, &restore.InPlaceOptions{VMID: dst.ID}); err != nil || res.BytesWritten != 0 {
		t.Errorf("second restore: %d bytes written, err %v; want none", res.BytesWritten, err)
	}
}
