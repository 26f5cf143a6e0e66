package fake

import (
	"errors"
	"os"
	"syscall"

	"github.com/vmbackup/vmbackup/hypervisor"
)

// Whence values of lseek(2) for sparse files (Linux).
const (
	seekData = 3
	seekHole = 4
)

// fileExtents returns the allocated ranges of f, found with SEEK_DATA and
// SEEK_HOLE. Where the file system cannot tell, the whole file is one
// extent. It only seeks, and the fake reads and writes files with pread and
// pwrite, so the file offset it moves is never used by anyone.
func fileExtents(f *os.File, size int64) ([]hypervisor.Extent, error) {
	var out []hypervisor.Extent
	for off := int64(0); off < size; {
		data, err := f.Seek(off, seekData)
		if errors.Is(err, syscall.ENXIO) {
			break // no data after off
		}
		if errors.Is(err, syscall.EINVAL) && off == 0 {
			return []hypervisor.Extent{{Offset: 0, Length: size}}, nil
		}
		if err != nil {
			return nil, err
		}
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return nil, err
		}
		hole = min(hole, size)
		out = append(out, hypervisor.Extent{Offset: data, Length: hole - data})
		off = hole
	}
	return out, nil
}
