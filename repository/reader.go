package repository

import (
	"context"
	"fmt"
	"io"
)

func (r *Repository) openDisk(ctx context.Context, m *Manifest, diskID string) (*DiskReader, error) {
	for _, d := range m.Disks {
		if d.ID != diskID {
			continue
		}
		x, err := r.readIndex(ctx, d.Index, nil)
		if err != nil {
			return nil, fmt.Errorf("open point %s disk %s: %w", m.ID, diskID, err)
		}
		if x.size != d.Size {
			return nil, fmt.Errorf("open point %s disk %s: index covers %d bytes, disk is %d: %w", m.ID, diskID, x.size, d.Size, ErrCorrupt)
		}
		return &DiskReader{r: r, ctx: ctx, pointID: m.ID, disk: d, idx: x}, nil
	}
	return nil, fmt.Errorf("open point %s disk %s: %w", m.ID, diskID, ErrNotFound)
}

// chunkError locates an error in a disk of a point.
func (d *DiskReader) chunkError(i int, id ChunkID, err error) error {
	return fmt.Errorf("point %s disk %s offset %d chunk %s: %w", d.pointID, d.disk.ID, int64(i)*int64(d.idx.chunkSize), id, err)
}

func (d *DiskReader) readChunk(ctx context.Context, i int, dst []byte) ([]byte, error) {
	if i < 0 || i >= d.idx.Len() {
		return dst, fmt.Errorf("point %s disk %s: slot %d out of range [0, %d)", d.pointID, d.disk.ID, i, d.idx.Len())
	}
	n := d.idx.slotLen(i)
	id := d.idx.Get(i)
	if id.IsZero() {
		return append(dst, make([]byte, n)...), nil
	}
	start := len(dst)
	out, err := d.r.readChunk(ctx, id, dst)
	if err != nil {
		return dst, d.chunkError(i, id, err)
	}
	if len(out)-start != n {
		return dst, d.chunkError(i, id, fmt.Errorf("chunk is %d bytes, slot is %d: %w", len(out)-start, n, ErrCorrupt))
	}
	return out, nil
}

func (d *DiskReader) readAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("point %s disk %s: negative offset %d", d.pointID, d.disk.ID, off)
	}
	if off >= d.disk.Size {
		return 0, io.EOF
	}
	want := len(p)
	if rest := d.disk.Size - off; int64(want) > rest {
		p = p[:rest]
	}
	cs := int64(d.idx.chunkSize)
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		i := int(pos / cs)
		in := int(pos - int64(i)*cs)
		n := min(len(p)-done, d.idx.slotLen(i)-in)
		id := d.idx.Get(i)
		if id.IsZero() {
			clear(p[done : done+n])
			done += n
			continue
		}
		d.mu.Lock()
		if d.cache == nil || d.cacheID != id || len(d.cache) != d.idx.slotLen(i) {
			buf, err := d.readChunk(d.ctx, i, d.cache[:0])
			if err != nil {
				d.cache, d.cacheID = nil, ChunkID{}
				d.mu.Unlock()
				return done, err
			}
			d.cache, d.cacheID = buf, id
		}
		copy(p[done:done+n], d.cache[in:in+n])
		d.mu.Unlock()
		done += n
	}
	if done < want {
		return done, io.EOF
	}
	return done, nil
}
