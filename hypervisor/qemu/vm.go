package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// vm is one defined VM. mu serializes changes of its processes.
type vm struct {
	h     *Hypervisor
	spec  VMSpec
	sizes []int64

	mu      chanMutex
	run     *proc // the VM's QEMU while it runs
	offline *proc // qemu-storage-daemon serving the images while stopped
	offRefs int   // holders of offline (snapshots, writable disks)
	writers map[string]bool
	snaps   map[string]*snapshot
	guests  map[string]*guestDisk // GuestWrite connections, by disk id
}

// chanMutex is a mutex whose Lock can give up when a context ends.
type chanMutex struct{ ch chan struct{} }

func (m *chanMutex) init() {
	if m.ch == nil {
		m.ch = make(chan struct{}, 1)
	}
}

func (m *chanMutex) Lock() { m.ch <- struct{}{} }

func (m *chanMutex) LockContext(ctx context.Context) error {
	select {
	case m.ch <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *chanMutex) Unlock() { <-m.ch }

func (v *vm) disk(id string) (int, bool) {
	for i, d := range v.spec.Disks {
		if d.ID == id {
			return i, true
		}
	}
	return 0, false
}

// running reports whether the VM's QEMU runs; a QEMU found dead is
// forgotten. Call with mu held.
func (v *vm) running() bool {
	if v.run != nil && !v.run.alive() {
		v.h.log.Warn("qemu: VM's QEMU has exited", "vm", v.spec.Name, "output", v.run.stderr.String())
		v.run.kill()
		v.run = nil
		clear(v.guests)
		for id, s := range v.snaps {
			if s.p != v.offline {
				s.teardown() // only removes the files: QEMU is gone
				delete(v.snaps, id)
			}
		}
	}
	return v.run != nil
}

// describe returns the VM in the contract's terms.
func (v *vm) describe() hypervisor.VM {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.describeLocked()
}

// describeLocked is describe for a caller holding mu.
func (v *vm) describeLocked() hypervisor.VM {
	power := hypervisor.PowerStopped
	if v.running() {
		power = hypervisor.PowerRunning
	}
	s := v.spec
	out := hypervisor.VM{
		ID: s.Name, Name: s.Name, CPUs: s.CPUs, MemoryB: s.MemoryB, Firmware: s.Firmware,
		Power: power, Labels: cloneMap(s.Labels),
	}
	for i, d := range s.Disks {
		out.Disks = append(out.Disks, hypervisor.DiskInfo{ID: d.ID, Name: d.Name, Size: v.sizes[i], Bus: d.Bus, BootOrder: d.BootOrder})
	}
	out.NICs = append([]hypervisor.NIC(nil), s.NICs...)
	out.Raw, _ = json.Marshal(s)
	return out
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// attach connects to the QMP socket of an attached VM. Call with mu held.
func (v *vm) attach(ctx context.Context) error {
	p, err := attachProc(ctx, v.h, "QEMU of "+v.spec.Name, v.spec.QMPSocket, v.spec.Disks)
	if err != nil {
		return fmt.Errorf("qemu: attach %q: %w", v.spec.Name, err)
	}
	v.run = p
	return nil
}

// start starts the VM's QEMU. Call with mu held.
func (v *vm) start(ctx context.Context) error {
	if v.running() {
		return nil
	}
	if v.spec.QMPSocket != "" {
		if err := v.attach(ctx); err != nil {
			return fmt.Errorf("qemu: start %q: an attached VM is started by its owner: %w", v.spec.Name, hypervisor.ErrUnsupported)
		}
		return nil
	}
	if v.offline != nil || len(v.writers) > 0 {
		return fmt.Errorf("qemu: start %q: its disks are open (a snapshot or a restore holds them): %w", v.spec.Name, hypervisor.ErrConflict)
	}
	machine := v.spec.Machine
	if machine == "" {
		machine = "none"
	}
	args := []string{"-machine", machine, "-nodefaults", "-display", "none", "-no-user-config", "-name", v.spec.Name}
	if machine != "none" {
		if v.spec.CPUs > 0 {
			args = append(args, "-smp", strconv.Itoa(v.spec.CPUs))
		}
		if v.spec.MemoryB > 0 {
			args = append(args, "-m", strconv.FormatInt(v.spec.MemoryB>>20, 10)+"M")
		}
	}
	args = append(args, blockdevArgs(v.spec.Disks, "-blockdev")...)
	if machine != "none" {
		for _, d := range v.spec.Disks {
			dev := "virtio-blk-pci,drive=" + d.GuestNode + ",id=" + d.Node + "dev,share-rw=on"
			if d.BootOrder > 0 {
				dev += ",bootindex=" + strconv.Itoa(d.BootOrder)
			}
			args = append(args, "-device", dev)
		}
	}
	args = append(args, v.spec.ExtraArgs...)
	p, err := v.h.startProc(ctx, "QEMU of "+v.spec.Name, v.h.opts.QEMU, args, false, v.spec.Disks)
	if err != nil {
		return fmt.Errorf("qemu: start %q: %w", v.spec.Name, err)
	}
	v.run = p
	return nil
}

// stop quits the VM's QEMU cleanly (bitmaps are saved). Snapshots taken
// from it are released first. Call with mu held.
func (v *vm) stop() error {
	if !v.running() {
		return nil
	}
	v.releaseSnaps(v.run)
	v.closeGuests()
	err := v.run.quit()
	v.run = nil
	if err != nil {
		return fmt.Errorf("qemu: stop %q: %w", v.spec.Name, err)
	}
	return nil
}

// releaseSnaps releases the snapshots served by p. Call with mu held.
func (v *vm) releaseSnaps(p *proc) {
	for id, s := range v.snaps {
		if s.p == p {
			s.teardown()
			delete(v.snaps, id)
		}
	}
}

// acquireOffline returns the qemu-storage-daemon serving the stopped VM's
// images, starting it if needed. Call with mu held; pair with
// releaseOffline.
func (v *vm) acquireOffline(ctx context.Context) (*proc, error) {
	if v.offline != nil && !v.offline.alive() {
		v.offline.kill()
		v.offline = nil
		v.offRefs = 0
	}
	if v.offline == nil {
		disks := daemonDisks(v.spec.Disks)
		p, err := v.h.startProc(ctx, "storage daemon of "+v.spec.Name, v.h.opts.StorageDaemon, blockdevArgs(disks, "--blockdev"), true, disks)
		if err != nil {
			return nil, fmt.Errorf("serve the images of stopped VM %q: %w", v.spec.Name, err)
		}
		v.offline = p
	}
	v.offRefs++
	return v.offline, nil
}

// releaseOffline drops one reference to the storage daemon and quits it
// (saving bitmaps) with the last. Call with mu held.
func (v *vm) releaseOffline() {
	if v.offline == nil {
		v.offRefs = 0
		return
	}
	v.offRefs--
	if v.offRefs > 0 {
		return
	}
	if err := v.offline.quit(); err != nil {
		v.h.log.Warn("qemu: stop storage daemon", "vm", v.spec.Name, "err", err)
	}
	v.offline = nil
}

// shutdownAll releases everything and stops a started QEMU.
func (v *vm) shutdownAll() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for id, s := range v.snaps {
		s.teardown()
		delete(v.snaps, id)
	}
	if v.offline != nil {
		v.offline.quit()
		v.offline = nil
		v.offRefs = 0
	}
	if v.run == nil {
		return nil
	}
	if v.spec.QMPSocket != "" {
		v.closeGuests()
		v.run.qmp.Close()
		v.run = nil
		return nil
	}
	return v.stop()
}

// Start starts a stopped VM's QEMU (for an attached VM that stopped:
// ErrUnsupported). It gives ErrConflict while a snapshot of the stopped VM
// or a disk opened for writing holds the images.
func (h *Hypervisor) Start(ctx context.Context, vmID string) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qemu: start %q: %w", vmID, err)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return fmt.Errorf("qemu: start %q: %w", vmID, err)
	}
	defer v.mu.Unlock()
	return v.start(ctx)
}

// PowerOff stops the VM's QEMU with the QMP quit command, which saves the
// dirty bitmaps in the images; snapshots taken from the running VM are
// released.
func (h *Hypervisor) PowerOff(ctx context.Context, vmID string) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qemu: power off %q: %w", vmID, err)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return fmt.Errorf("qemu: power off %q: %w", vmID, err)
	}
	defer v.mu.Unlock()
	return v.stop()
}

// Shutdown asks the guest to power down (ACPI system_powerdown) and waits
// for QEMU to exit. A VM with machine "none" has no guest to ask: QEMU is
// quit as by PowerOff.
func (h *Hypervisor) Shutdown(ctx context.Context, vmID string) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qemu: shut down %q: %w", vmID, err)
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return fmt.Errorf("qemu: shut down %q: %w", vmID, err)
	}
	defer v.mu.Unlock()
	if !v.running() {
		return nil
	}
	if v.spec.Machine == "" || v.spec.Machine == "none" {
		return v.stop()
	}
	p := v.run
	if err := p.qmp.Execute(ctx, "system_powerdown", nil, nil); err != nil {
		return fmt.Errorf("qemu: shut down %q: %w", vmID, err)
	}
	select {
	case <-p.qmp.Done():
	case <-ctx.Done():
		return fmt.Errorf("qemu: shut down %q: %w", vmID, ctx.Err())
	}
	v.running()
	return nil
}

// Kill kills the VM's QEMU with SIGKILL, as a host crash would: bitmaps
// created since it started are lost and loaded ones become inconsistent,
// so earlier change tokens give ErrTokenInvalid. It is meant for tests and
// for a QEMU that hangs.
func (h *Hypervisor) Kill(ctx context.Context, vmID string) error {
	v, err := h.lookup(vmID)
	if err != nil {
		return err
	}
	if err := v.mu.LockContext(ctx); err != nil {
		return fmt.Errorf("qemu: kill %q: %w", vmID, err)
	}
	defer v.mu.Unlock()
	if v.run == nil {
		return nil
	}
	if v.run.cmd == nil {
		return fmt.Errorf("qemu: kill %q: the backend did not start its QEMU: %w", vmID, hypervisor.ErrUnsupported)
	}
	v.closeGuests()
	p := v.run
	p.kill()
	v.run = nil
	for id, s := range v.snaps {
		if s.p == p {
			s.teardown() // only removes the files: QEMU is gone
			delete(v.snaps, id)
		}
	}
	return nil
}

// CreateVM creates qcow2 images in Options.ImageDir (named after the VM
// and the disk index) and defines a stopped VM on them. NICs are recorded
// in the spec (and passed to QEMU only through ExtraArgs).
func (h *Hypervisor) CreateVM(ctx context.Context, spec hypervisor.CreateSpec) (hypervisor.VM, error) {
	if err := ctx.Err(); err != nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: create VM %q: %w", spec.Name, err)
	}
	if h.opts.ImageDir == "" {
		return hypervisor.VM{}, fmt.Errorf("qemu: create VM %q: no Options.ImageDir: %w", spec.Name, hypervisor.ErrUnsupported)
	}
	if _, err := h.lookup(spec.Name); err == nil {
		return hypervisor.VM{}, fmt.Errorf("qemu: create VM %q: name %w", spec.Name, hypervisor.ErrConflict)
	}
	vs := VMSpec{Name: spec.Name, CPUs: spec.CPUs, MemoryB: spec.MemoryB, Firmware: spec.Firmware}
	if vs.Firmware == "" {
		vs.Firmware = "bios"
	}
	var src VMSpec
	if len(spec.Raw) > 0 && json.Unmarshal(spec.Raw, &src) == nil {
		vs.Machine, vs.ExtraArgs = src.Machine, src.ExtraArgs
	}
	for i, n := range spec.NICs {
		if n.ID == "" {
			n.ID = fmt.Sprintf("nic%d", i)
		}
		vs.NICs = append(vs.NICs, n)
	}
	var made []string
	cleanup := func() {
		for _, p := range made {
			os.Remove(p)
		}
	}
	for i, d := range spec.Disks {
		path := filepath.Join(h.opts.ImageDir, fmt.Sprintf("%s-%d.qcow2", safeName(spec.Name), i))
		if _, err := os.Stat(path); err == nil {
			cleanup()
			return hypervisor.VM{}, fmt.Errorf("qemu: create VM %q: image %s exists: %w", spec.Name, path, hypervisor.ErrConflict)
		}
		if err := h.qemuImg(ctx, "create", "-q", "-f", "qcow2", path, strconv.FormatInt(d.Size, 10)); err != nil {
			cleanup()
			return hypervisor.VM{}, fmt.Errorf("qemu: create VM %q: %w", spec.Name, err)
		}
		made = append(made, path)
		vs.Disks = append(vs.Disks, DiskSpec{ID: fmt.Sprintf("disk%d", i), Name: d.Name, Image: path, Bus: d.Bus, BootOrder: d.BootOrder})
	}
	vm, err := h.Define(ctx, vs)
	if err != nil {
		cleanup()
		return hypervisor.VM{}, err
	}
	return vm, nil
}

func (h *Hypervisor) qemuImg(ctx context.Context, args ...string) error {
	out, err := execCommand(ctx, h.opts.QEMUImg, args...).CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
		}
		return fmt.Errorf("qemu-img %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == '\\' {
			return '_'
		}
		return r
	}, s)
}
