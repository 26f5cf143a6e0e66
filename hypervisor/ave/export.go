package ave

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// ExportDataPath is the default DataPath: export-vm-volume of the
// snapshot's volume as RAW, get-export-file-download-links, and one HTTP GET
// per disk, streamed into a sparse temporary file (under Options.TempDir) as
// it arrives. ReadAt of a range waits until the download has passed it, so
// reads that go mostly in order (as the engine's do) are served while the
// download runs; memory stays at one 64 KiB buffer per disk, and the
// temporary file holds only non-zero blocks. A download that fails is
// retried and resumed with a Range request where AOC honours Range
// (otherwise restarted, skipping what is already there), up to
// Options.DownloadRetries times without progress; then ReadAt fails with
// the reason. The export file is deleted as soon as the download is
// complete, and in any case when the disk is closed.
//
// How AOC names a snapshot's volume in export-vm-volume is not in its public
// documentation; this path sends {"vm_snapshot_id", "vm_volume_local_id",
// "type":"RAW"}, which the avetest server speaks. Plug in another DataPath
// if your AOC wants something else.
type ExportDataPath struct{}

// OpenSnapshotDisk exports and starts downloading one snapshot disk.
func (ExportDataPath) OpenSnapshotDisk(ctx context.Context, h *Hypervisor, src DiskSource) (hypervisor.Disk, error) {
	f, err := h.startExport(ctx, map[string]any{"vm_snapshot_id": src.SnapshotID, "vm_volume_local_id": src.VolumeLocalID, "type": "RAW"}, src.Size)
	if err != nil {
		return nil, err
	}
	return &exportDisk{f}, nil
}

// startExport exports a volume (or a snapshot's volume) and starts
// downloading it into a staging file of size bytes.
func (h *Hypervisor) startExport(ctx context.Context, item map[string]any, size int64) (*staging, error) {
	var ans []mutationAnswer
	if err := h.c.call(ctx, "export-vm-volume", map[string]any{"data": []any{item}}, &ans); err != nil {
		return nil, err
	}
	if len(ans) != 1 {
		return nil, fmt.Errorf("export-vm-volume answered %d items: %w", len(ans), ErrBadResponse)
	}
	var ex struct {
		ID string `json:"id"`
	}
	if err := jsonData(ans[0].Data, &ex); err != nil || ex.ID == "" {
		return nil, fmt.Errorf("export-vm-volume answer has no export file id: %w", ErrBadResponse)
	}
	st, err := h.newStaging(size)
	if err != nil {
		h.deleteExport(ex.ID)
		return nil, err
	}
	st.exportID = ex.ID
	fail := func(err error) (*staging, error) {
		st.close()
		return nil, err
	}
	if err := h.waitTask(ctx, "export-vm-volume", ans[0].TaskID); err != nil {
		return fail(err)
	}
	var links []struct {
		Filename string `json:"filename"`
		Link     string `json:"link"`
	}
	if err := h.c.call(ctx, "get-export-file-download-links", map[string]any{"where": map[string]any{"id": ex.ID}}, &links); err != nil {
		return fail(err)
	}
	if len(links) != 1 || links[0].Link == "" {
		return fail(fmt.Errorf("get-export-file-download-links answered %d links for export %s: %w", len(links), ex.ID, ErrBadResponse))
	}
	st.link = links[0].Link
	st.startDownload()
	return st, nil
}

func (h *Hypervisor) deleteExport(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), h.opts.RequestTimeout)
	defer cancel()
	if _, err := h.mutate(ctx, "delete-export-file", map[string]any{"where": map[string]any{"id": id}}); err != nil {
		h.log.Warn("ave: could not delete export file", "export_file", id, "err", err)
	}
}

func jsonData(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return ErrBadResponse
	}
	return json.Unmarshal(raw, v)
}

// staging is a local sparse file of a volume's size that a download fills
// in order. have is how far it is filled; readers and writers wait until it
// has passed their range.
type staging struct {
	h        *Hypervisor
	size     int64
	f        *os.File
	exportID string // "" once deleted or if none
	link     string

	mu     sync.Mutex
	cond   *sync.Cond
	have   int64
	err    error // the download's final error
	closed bool
	cancel context.CancelFunc
	done   chan struct{}

	fileMu sync.RWMutex // write-locked to close f
}

var errClosed = errors.New("ave: disk is closed")

func (h *Hypervisor) newStaging(size int64) (*staging, error) {
	f, err := os.CreateTemp(h.opts.TempDir, "ave-disk-*.raw")
	if err != nil {
		return nil, fmt.Errorf("create staging file: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("create staging file: %w", err)
	}
	st := &staging{h: h, size: size, f: f, done: make(chan struct{})}
	st.cond = sync.NewCond(&st.mu)
	return st, nil
}

// filled marks the staging file complete without a download (a volume
// known to be zero-filled).
func (st *staging) filled() {
	st.mu.Lock()
	st.have = st.size
	st.mu.Unlock()
	close(st.done)
}

func (st *staging) startDownload() {
	ctx, cancel := context.WithCancel(context.Background())
	st.mu.Lock()
	st.cancel = cancel
	st.mu.Unlock()
	go func() {
		defer close(st.done)
		err := st.download(ctx)
		st.mu.Lock()
		if err != nil && st.err == nil {
			st.err = err
		}
		st.cond.Broadcast()
		st.mu.Unlock()
		if err == nil {
			st.dropExport()
		}
	}()
}

func (st *staging) dropExport() {
	st.mu.Lock()
	id := st.exportID
	st.exportID = ""
	st.mu.Unlock()
	if id != "" {
		st.h.deleteExport(id)
	}
}

// download fetches the export until the file is complete, retrying.
func (st *staging) download(ctx context.Context) error {
	fails := 0
	for {
		st.mu.Lock()
		from := st.have
		st.mu.Unlock()
		if from >= st.size {
			return nil
		}
		err := st.fetch(ctx, from)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return errClosed
		}
		st.mu.Lock()
		progressed := st.have > from
		st.mu.Unlock()
		if progressed {
			fails = 0
		} else {
			fails++
		}
		var perm permanentError
		if errors.As(err, &perm) || fails > st.h.opts.DownloadRetries {
			return fmt.Errorf("ave: download export %s: giving up at byte %d of %d: %w", st.exportID, from, st.size, err)
		}
		st.h.log.Warn("ave: download interrupted, resuming", "export_file", st.exportID, "at", from, "err", err)
		if err := sleep(ctx, time.Duration(50<<min(fails, 6))*time.Millisecond); err != nil {
			return errClosed
		}
	}
}

type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// fetch GETs the link from byte from and writes what arrives.
func (st *staging) fetch(ctx context.Context, from int64) (err error) {
	// The idle timer cancels the request when nothing arrives for
	// DownloadIdleTimeout; every piece received resets it.
	idle := st.h.opts.DownloadIdleTimeout
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("download: nothing received for %v", idle)
	timer := time.AfterFunc(idle, func() { cancel(stalled) })
	defer timer.Stop()
	defer func() {
		if err != nil && context.Cause(ctx) == stalled {
			err = stalled
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, st.link, nil)
	if err != nil {
		return permanentError{fmt.Errorf("download link: %w", err)}
	}
	if tok := st.h.c.authFor(ctx, st.link); tok != "" {
		req.Header.Set("Authorization", tok)
	}
	if from > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", from))
	}
	resp, err := st.h.c.http.Do(req)
	if err != nil {
		return stripURL(err)
	}
	defer resp.Body.Close()
	skip := int64(0)
	switch {
	case resp.StatusCode == http.StatusPartialContent && from > 0:
		var a int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &a); err != nil || a != from {
			return permanentError{fmt.Errorf("download: Content-Range %q does not start at %d", resp.Header.Get("Content-Range"), from)}
		}
	case resp.StatusCode == http.StatusOK:
		skip = from // Range not honoured: read again from the start
		if cl := resp.ContentLength; cl >= 0 && cl != st.size {
			return permanentError{fmt.Errorf("download: %d bytes offered, want %d", cl, st.size)}
		}
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("download: HTTP %d", resp.StatusCode)
	default:
		return permanentError{fmt.Errorf("download: HTTP %d", resp.StatusCode)}
	}
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, resp.Body, skip); err != nil {
			return fmt.Errorf("download: %w", err)
		}
	}
	buf := make([]byte, 64<<10)
	off := from
	for off < st.size {
		n, err := io.ReadFull(resp.Body, buf[:min(int64(len(buf)), st.size-off)])
		timer.Reset(idle)
		if n > 0 {
			if !allZero(buf[:n]) {
				st.fileMu.RLock()
				_, werr := st.f.WriteAt(buf[:n], off)
				st.fileMu.RUnlock()
				if werr != nil {
					return permanentError{fmt.Errorf("write staging file: %w", werr)}
				}
			}
			off += int64(n)
			st.mu.Lock()
			st.have = off
			st.cond.Broadcast()
			st.mu.Unlock()
		}
		if err != nil {
			if off >= st.size {
				return nil
			}
			return fmt.Errorf("download: connection ended at byte %d of %d: %w", off, st.size, err)
		}
	}
	return nil
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// wait blocks until [0, end) is filled, the download failed, or the file is
// closed.
func (st *staging) wait(end int64) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	for st.have < end && st.err == nil && !st.closed {
		st.cond.Wait()
	}
	switch {
	case st.closed:
		return errClosed
	case st.have >= end:
		return nil
	}
	return st.err
}

// waitCtx is wait with a context (Flush).
func (st *staging) waitCtx(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		st.mu.Lock()
		st.cond.Broadcast()
		st.mu.Unlock()
	})
	defer stop()
	st.mu.Lock()
	defer st.mu.Unlock()
	for st.have < st.size && st.err == nil && !st.closed && ctx.Err() == nil {
		st.cond.Wait()
	}
	switch {
	case st.closed:
		return errClosed
	case st.have >= st.size:
		return nil
	case st.err != nil:
		return st.err
	}
	return ctx.Err()
}

func (st *staging) readAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("ave: ReadAt at negative offset %d", off)
	}
	if off >= st.size {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), st.size)
	if err := st.wait(end); err != nil {
		return 0, err
	}
	st.fileMu.RLock()
	defer st.fileMu.RUnlock()
	if st.f == nil {
		return 0, errClosed
	}
	n, err := st.f.ReadAt(p[:end-off], off)
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("ave: read staging file: %w", err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// close stops the download, removes the file and deletes the export file.
func (st *staging) close() {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return
	}
	st.closed = true
	cancel := st.cancel
	st.cond.Broadcast()
	st.mu.Unlock()
	if cancel != nil {
		cancel()
		<-st.done
	}
	st.fileMu.Lock()
	if st.f != nil {
		st.f.Close()
		os.Remove(st.f.Name())
		st.f = nil
	}
	st.fileMu.Unlock()
	st.dropExport()
}

// exportDisk is a snapshot disk read through ExportDataPath.
type exportDisk struct{ st *staging }

func (d *exportDisk) ReadAt(p []byte, off int64) (int, error) { return d.st.readAt(p, off) }
func (d *exportDisk) Size() int64                             { return d.st.size }
func (d *exportDisk) Close() error                            { d.st.close(); return nil }
