// Package ave is the vmbackup backend for AVE, the hypervisor of ACOS
// clusters, driven through the REST API of AOC (the management center):
// POST-only JSON under /v2/api, a token from /v2/api/login sent as the
// Authorization header, asynchronous tasks polled with get-tasks.
//
// # Wiring
//
//	hv, err := ave.New(ave.Options{
//		BaseURL:  "https://aoc.example.com",
//		Username: os.Getenv("AOC_USERNAME"),
//		Password: os.Getenv("AOC_PASSWORD"),
//		CABundle: caPEM, // AOC's certificate, if self-signed
//	})
//	// hv is a hypervisor.Hypervisor, PowerController, DiskWriter and Creator.
//
// # What maps onto what
//
//   - A VM is a get-vms element; its Raw is that JSON. Its disks are the
//     VM disks of type DISK (CD-ROMs are left out); DiskInfo.ID is the VM
//     disk's id, which stays the same when a restore swaps the volume
//     behind it. NIC.Network is the id of the VLAN object the NIC is
//     connected to, NIC.Connected its "enabled". Labels are key/value.
//   - A snapshot is create-vm-snapshot: CRASH_CONSISTENT, or
//     FILE_SYSTEM_CONSISTENT for application consistency (needs running
//     guest tools; falls back to crash consistency with a Note when the
//     caller allows). Release deletes it; so does every failure after AOC
//     accepted it.
//   - Snapshot disks are read through a DataPath; the default
//     (ExportDataPath) exports the volume and downloads it into a sparse
//     temporary file that ReadAt serves from as the download advances.
//   - Restore in place stages writes in a sparse temporary file, uploads it
//     (upload-elf-file), imports it (import-vm-volume) and swaps it into the
//     disk (update-vm-disk) while the VM is stopped.
//   - Rebuild is create-vm with new volumes; the caller maps networks by
//     setting each NIC's Network to a VLAN id of the target.
//
// # Change tracking
//
// AOC's public API has no changed-block tracking, so snapshot disks of the
// default data path implement neither hypervisor.ChangeTracker nor
// ExtentReporter: every backup reads whole disks, and the engine stores only
// the chunks the repository lacks (hash-based incrementals). An embedder
// with access to change information (reading ABS directly) plugs in a
// DataPath whose disks implement ChangeTracker.
//
// # Errors and secrets
//
// AOC's error answers become *APIError (operation, HTTP status, AOC code and
// message), which errors.Is maps onto hypervisor.ErrNotFound, ErrConflict
// and ErrUnsupported. Answers that are not JSON (an HTML page from a proxy)
// or malformed JSON wrap ErrBadResponse; a task that outlives
// Options.TaskTimeout wraps ErrTaskTimeout; refused credentials wrap
// ErrLogin. A 401 triggers one new login. Passwords and tokens never appear
// in errors or logs; Options.String redacts them.
//
// # Testing
//
// Package avetest is an in-memory AOC that speaks the same wire, with fault
// injection; the conformance suite of package hypervisortest runs against it.
package ave
