//go:build !unix

package repository

// flushFS is a no-op where the platform offers no filesystem-wide flush:
// file:// repositories there rely on the operating system's write-back.
func flushFS(dir string) error { return nil }
