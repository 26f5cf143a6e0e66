// Package restore writes a restore point's disks back onto a hypervisor: in
// place onto the same VM ([InPlace]), or into a new VM created from the
// point's configuration ([Rebuild]).
//
// Every chunk read from the repository is verified against its id by the
// repository's DiskReader; a corrupt chunk stops the restore with an error
// that names the point, disk, offset and chunk. The restore point itself is
// only read, never changed, whatever happens.
//
// # Writing only what differs
//
// A restore in place writes as little as it can, choosing per disk:
//
//   - "changed blocks": the target disk reports, through
//     hypervisor.ChangeReporter, which ranges changed since the snapshot
//     whose change token the point recorded. Only the chunks those ranges
//     touch are written; everything else still holds the point's content.
//   - "compare": otherwise (no change reporting, no token, or a token the
//     hypervisor no longer honours) every chunk of the target is read and
//     hashed, and only chunks whose content differs are written.
//   - "fresh disk": before either, a target disk that reports its
//     allocated extents (hypervisor.ExtentReporter on the WritableDisk)
//     and holds no data at all, such as a new sparse image file, is
//     written like a rebuild's (below) without being read; DiskResult.Reason
//     says so. The engine finds this out itself: the caller need not
//     promise it with TargetZeroed.
//
// Either way, a chunk that is all zeros in the point is written (as zeros)
// only where the target does not already read as zeros.
//
// A rebuild writes into freshly created disks, which read as zeros, so
// zero chunks are not written at all ("fresh disk"); every other chunk is
// written once, in disk order, with chunk-aligned writes, leaving its zero
// 64 KiB blocks as holes. InPlaceOptions.TargetZeroed asks for the same
// on an existing VM whose disks are known to be empty.
//
// Within a chunk that must be written, only the runs of 64 KiB blocks that
// differ from the target's content are written. A target disk that
// reports its allocated extents is not read where it holds nothing: a
// chunk that lies wholly in a hole of the target is written as onto a
// fresh disk.
//
// # Speed
//
// Measured with internal/bench (1 GiB image, 2 shared cores), a restore
// onto a new sparse file is bound by CPU: SHA-256 verification of every
// chunk (about a quarter), zstd decoding (a third), and the kernel's
// copies into the page cache and out of the chunk files (a quarter).
// Writing through the page cache is faster here than O_DIRECT: 1.2 GiB in
// 1 MiB writes took 0.4-1.1 s (0.4-1.7 s of system time) buffered against
// 2.4-3.2 s (0.2-0.4 s system) with O_DIRECT, bound by the device. A
// restore issues writes of up to a chunk, in disk order, from several
// workers, and leaves zero blocks of a fresh disk as holes; how the target
// writes them (page cache or not) is the hypervisor backend's choice.
//
// # Power
//
// A disk can only be written while its VM is stopped. InPlace refuses a
// running (or suspended) VM with an error wrapping [ErrVMRunning] unless
// InPlaceOptions.PowerOff is set, in which case it asks the guest to shut
// down, waits up to ShutdownTimeout, and then cuts the power. Start (in
// place) and PowerOn (rebuild) start the VM after its disks are written.
//
// # Failure
//
// A restore that fails part-way returns an error that says which disk and
// chunk failed and that the target's disks are incomplete; the Result
// returned with it says how far it got. A rebuild that fails after
// creating its VM leaves that VM in place (the contract has no delete) and
// names it in the error and in Result.VM.
package restore
