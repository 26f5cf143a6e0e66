// Package restore writes a restore point's disks back onto a hypervisor: in place onto the same VM, or into a rebuilt VM.
package restore
