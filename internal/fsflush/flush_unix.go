//go:build unix && !linux

package fsflush

import "syscall"

// Flush makes every write to the filesystem holding dir durable; without
// syncfs(2), sync(2) flushes all filesystems.
func Flush(dir string) error {
	syscall.Sync()
	return nil
}
