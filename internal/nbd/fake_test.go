package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// scripted is a minimal NBD server for replies qemu-nbd does not send on
// demand (error chunks, out-of-order chunks, protocol violations). reply
// answers each READ request.
type scripted struct {
	size  uint64
	reply func(w io.Writer, handle, off uint64, n uint32)
}

func (s *scripted) serve(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go s.conn(c)
		}
	}()
	return sock
}

func (s *scripted) conn(c net.Conn) {
	defer c.Close()
	be := binary.BigEndian
	var b []byte
	b = be.AppendUint64(b, nbdMagic)
	b = be.AppendUint64(b, optMagic)
	b = be.AppendUint16(b, flagFixedNewstyle|flagNoZeroes)
	c.Write(b)
	var cflags [4]byte
	if _, err := io.ReadFull(c, cflags[:]); err != nil {
		return
	}
	optReply := func(opt, typ uint32, data []byte) {
		var r []byte
		r = be.AppendUint64(r, optReplyMagic)
		r = be.AppendUint32(r, opt)
		r = be.AppendUint32(r, typ)
		r = be.AppendUint32(r, uint32(len(data)))
		c.Write(append(r, data...))
	}
	for {
		var h [16]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		opt, n := be.Uint32(h[8:]), be.Uint32(h[12:])
		data := make([]byte, n)
		io.ReadFull(c, data)
		switch opt {
		case optStructuredReply:
			optReply(opt, repAck, nil)
		case optGo:
			var info []byte
			info = be.AppendUint16(info, infoExport)
			info = be.AppendUint64(info, s.size)
			info = be.AppendUint16(info, 1|transFlagReadOnly)
			optReply(opt, repInfo, info)
			optReply(opt, repAck, nil)
			goto transmission
		default:
			optReply(opt, repErrBit|1, nil)
		}
	}
transmission:
	for {
		var h [28]byte
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return
		}
		typ := be.Uint16(h[6:])
		if typ == cmdDisc {
			return
		}
		s.reply(c, be.Uint64(h[8:]), be.Uint64(h[16:]), be.Uint32(h[24:]))
	}
}

// chunk writes one structured reply chunk.
func chunk(w io.Writer, flags, typ uint16, handle uint64, payload []byte) {
	be := binary.BigEndian
	var b []byte
	b = be.AppendUint32(b, structuredMagic)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, handle)
	b = be.AppendUint32(b, uint32(len(payload)))
	w.Write(append(b, payload...))
}

func TestScriptedReplies(t *testing.T) {
	be := binary.BigEndian
	s := &scripted{size: 1 << 20, reply: func(w io.Writer, handle, off uint64, n uint32) {
		switch {
		case off == 0: // second half as data first, then the first half as a hole
			half := uint64(n / 2)
			data := be.AppendUint64(nil, off+half)
			data = append(data, bytes.Repeat([]byte{7}, int(uint64(n)-half))...)
			chunk(w, 0, replyOffsetData, handle, data)
			hole := be.AppendUint64(nil, off)
			hole = be.AppendUint32(hole, uint32(half))
			chunk(w, replyFlagDone, replyOffsetHole, handle, hole)
		case off == 4096: // an error chunk
			e := be.AppendUint32(nil, 5)
			e = be.AppendUint16(e, 4)
			e = append(e, "oops"...)
			chunk(w, replyFlagDone, replyError, handle, e)
		case off == 8192: // a done chunk that leaves bytes uncovered
			chunk(w, replyFlagDone, replyNone, handle, nil)
		case off == 12288: // no reply at all: a hung server
		}
	}}
	sock := s.serve(t)
	ctx := context.Background()
	c, err := Dial(ctx, "unix", sock, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := bytes.Repeat([]byte{0xee}, 1000)
	if _, err := c.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	want := append(make([]byte, 500), bytes.Repeat([]byte{7}, 500)...)
	if !bytes.Equal(p, want) {
		t.Errorf("hole then data: got %v...", p[495:505])
	}
	_, err = c.ReadAt(p, 4096)
	var ne *Error
	if !errors.As(err, &ne) || ne.Errno != 5 || ne.Message != "oops" || errors.Is(err, ErrClosed) {
		t.Errorf("error chunk: %v, want *Error EIO with the message", err)
	}
	// The connection survives a per-request error.
	if _, err := c.ReadAt(p, 0); err != nil {
		t.Errorf("read after an error chunk: %v", err)
	}
	// Uncovered bytes break the connection rather than return garbage.
	if _, err := c.ReadAt(p, 8192); !errors.Is(err, ErrClosed) {
		t.Errorf("read the server did not cover: %v, want ErrClosed", err)
	}
	if _, err := c.ReadAt(p, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read on a broken connection: %v, want ErrClosed", err)
	}
	// A hung server: ReadAt gives up after Options.Timeout and closes
	// the connection.
	c2, err := Dial(ctx, "unix", sock, Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.ReadAt(p, 0); err != nil {
		t.Fatalf("read before the hang: %v", err)
	}
	if _, err := c2.ReadAt(p, 12288); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, ErrClosed) {
		t.Errorf("read from a hung server: %v, want ErrDeadlineExceeded and ErrClosed", err)
	}
	// Options the server refuses fail the handshake with an *Error.
	if _, err := Dial(ctx, "unix", sock, Options{MetaContexts: []string{ContextAllocation}}); !errors.As(err, &ne) {
		t.Errorf("refused SET_META_CONTEXT: %v, want *Error", err)
	}
	// A cancelled context stops the handshake.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := Dial(cctx, "unix", sock, Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context: %v", err)
	}
}
