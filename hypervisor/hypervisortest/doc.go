// Package hypervisortest is the conformance suite for implementations of
// package hypervisor. Every backend in this module runs it, and embedders can
// run it on their own:
//
//	func TestConformance(t *testing.T) {
//		hypervisortest.Run(t, func(ctx context.Context, t *testing.T) (hypervisortest.Harness, error) {
//			return newMyHarness(t)
//		})
//	}
//
// Abilities a backend lacks (optional interfaces it does not implement) are
// skipped, not failed. A backend that passes needs no further unit tests of
// the contract's semantics; its own tests cover what is specific to it.
//
// # What a harness provides
//
// A [Harness] makes running VMs with zero-filled disks of given sizes and
// plays the guest (GuestWrite). Optional interfaces on the Harness let the
// suite check more:
//
//   - [SnapshotCounter]: no snapshot is leaked (after Release, after a
//     Release with a cancelled context, after a cancelled Snapshot).
//   - [TrackingResetter]: tokens from before a reset of change tracking
//     give ErrTokenInvalid.
//   - [QuiesceReporter]: application consistency is checked exactly
//     instead of accepting either outcome.
//   - [SpecAdjuster]: the CreateSpec used for Creator gets a placement and
//     networks that exist on the backend.
//   - [Skipper]: skip named subtests the test environment cannot run.
//
// # What the suite relies on
//
// Beyond the contract in package hypervisor's docs, the suite assumes that
// a Snapshot of a stopped VM works (it checks restored and created disks
// through one), that two snapshots of one VM can be held at once (each
// seeing its own instant), and that a VM made by NewVM is running and can
// be powered off and on (for DiskWriter). VMs made by NewVM are named "hvtest-N-X" and
// VMs made through Creator "hvtest-create-X"; a harness for a shared
// backend deletes them in Close, since the contract has no way to delete a
// VM.
//
// # Reproducing a failure
//
// Writes are random (sizes from 1 byte to 512 KiB, unaligned, across block
// boundaries, at the end of the disk, some all zeros). Run logs its seed;
// set the environment variable named by [SeedEnv] to replay it:
//
//	HYPERVISORTEST_SEED=1234 go test -run 'TestConformance/Changes/Random' ./...
package hypervisortest
