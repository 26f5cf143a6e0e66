//go:build unix && !linux

package repository

import "syscall"

// flushFS makes every write to the filesystem holding dir durable; without
// syncfs(2), sync(2) flushes all filesystems.
func flushFS(dir string) error {
	syscall.Sync()
	return nil
}
