// Package fsflush makes a filesystem's writes durable in one call
// (syncfs(2) on Linux), for code that wrote many files and must not
// report them done before they are: file:// repositories before a
// manifest, and the benchmark's reference pipeline at the end of a backup.
package fsflush
