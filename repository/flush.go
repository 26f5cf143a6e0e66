package repository

import (
	"sync/atomic"

	"github.com/vmbackup/vmbackup/internal/fsflush"
)

// flushEvery is how many bytes a file:// repository takes between two
// background flushes.
const flushEvery = 32 << 20

// flusher keeps a file:// repository's writes going to disk while a backup
// runs: every flushEvery bytes stored it starts a filesystem flush in the
// background (one at a time), so the disk writes chunks back while the
// backup reads and compresses, and the flush that Commit needs before the
// manifest finds little left to do.
type flusher struct {
	dir     string
	pending atomic.Int64
	running atomic.Bool
}

// wrote counts n bytes stored and starts a background flush when due.
func (f *flusher) wrote(n int64) {
	if f.pending.Add(n) < flushEvery || !f.running.CompareAndSwap(false, true) {
		return
	}
	f.pending.Store(0)
	go func() {
		defer f.running.Store(false)
		fsflush.Flush(f.dir) // an error shows again at Commit's flush
	}()
}
