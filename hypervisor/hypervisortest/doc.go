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
// skipped, not failed.
package hypervisortest
