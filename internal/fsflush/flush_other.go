//go:build !unix

package fsflush

// Flush is a no-op where the platform offers no filesystem-wide flush:
// callers there rely on the operating system's write-back.
func Flush(dir string) error { return nil }
