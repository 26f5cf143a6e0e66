// Package nbd is a small client for the Network Block Device protocol, as
// spoken by qemu-nbd, qemu-storage-daemon and QEMU's built-in NBD server.
//
// It does what vmbackup needs and nothing more: the fixed-newstyle handshake,
// structured replies, metadata contexts (base:allocation and
// qemu:dirty-bitmap:NAME), NBD_OPT_GO, and the commands READ, WRITE, FLUSH,
// BLOCK_STATUS and DISC, over a unix socket or TCP.
//
// # Concurrency
//
// A [Conn] pipelines requests: every request carries a handle (the protocol's
// "cookie"), one goroutine reads replies and hands each to the request that
// waits for it, so many goroutines may call ReadAt, WriteAt and BlockStatus
// at once on one connection and the server works on them in parallel. Large
// reads and writes are split into requests of at most [Conn.MaxRequest]
// bytes that are all sent before the first reply is awaited.
//
// # Errors
//
// An error the server reports for one request is an [*Error] with the
// protocol's errno value; the connection stays usable. Any protocol
// violation or I/O error breaks the connection: every pending and later
// request fails with an error wrapping [ErrClosed] or the cause.
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Protocol constants (see the NBD protocol document, "proto.md").
const (
	nbdMagic        = 0x4e42444d41474943 // "NBDMAGIC"
	optMagic        = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic   = 0x3e889045565a9
	requestMagic    = 0x25609513
	simpleMagic     = 0x67446698
	structuredMagic = 0x668e33ef

	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1

	optGo               = 7
	optStructuredReply  = 8
	optSetMetaContext   = 10
	repAck              = 1
	repInfo             = 3
	repMetaContext      = 4
	repErrBit           = 1 << 31
	infoExport          = 0
	infoBlockSize       = 3
	cmdRead             = 0
	cmdWrite            = 1
	cmdDisc             = 2
	cmdFlush            = 3
	cmdBlockStatus      = 7
	replyFlagDone       = 1 << 0
	replyNone           = 0
	replyOffsetData     = 1
	replyOffsetHole     = 2
	replyBlockStatus    = 5
	replyError          = 1<<15 + 1
	replyErrorOffset    = 1<<15 + 2
	transFlagReadOnly   = 1 << 1
	transFlagSendFlush  = 1 << 2
	transFlagMultiConn  = 1 << 8
	defaultMaxRequest   = 32 << 20
	maxBlockStatusQuery = 1 << 31 // a request length is 32 bits
)

// Metadata context names and their flags.
const (
	// ContextAllocation is the base:allocation context: a range with
	// StateHole set is not allocated; one with StateZero set reads as zeros.
	ContextAllocation = "base:allocation"
	// StateHole marks an unallocated range in base:allocation.
	StateHole = 1
	// StateZero marks a range that reads as zeros in base:allocation.
	StateZero = 2
	// StateDirty marks a dirty range in a qemu:dirty-bitmap:NAME context.
	StateDirty = 1
)

// DirtyBitmapContext returns the metadata context name QEMU uses to export
// the dirty bitmap named name.
func DirtyBitmapContext(name string) string { return "qemu:dirty-bitmap:" + name }

// ErrClosed is wrapped by the errors of requests on a connection that was
// closed or broke.
var ErrClosed = errors.New("nbd: connection closed")

// Error is an error the server returned for one request (or option). Errno
// is the protocol's error value (EIO=5, EPERM=1, EINVAL=22, ENOSPC=28, ...).
type Error struct {
	Op      string
	Errno   uint32
	Message string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("nbd: %s: server error %d: %s", e.Op, e.Errno, e.Message)
	}
	return fmt.Sprintf("nbd: %s: server error %d", e.Op, e.Errno)
}

// Options says what to ask for in the handshake.
type Options struct {
	// Export is the export's name ("" is the default export).
	Export string
	// MetaContexts are the metadata contexts to negotiate, e.g.
	// ContextAllocation and DirtyBitmapContext("b0"). Each must be
	// granted by the server, else Dial fails.
	MetaContexts []string
	// Timeout bounds ReadAt and WriteAt (the calls without a context):
	// a server that has not answered within it is taken for hung, and
	// the connection is closed. Zero means no bound.
	Timeout time.Duration
}

// Extent is one run of a block status reply: Length bytes at Offset with
// the context's Flags.
type Extent struct {
	Offset int64
	Length int64
	Flags  uint32
}

// Conn is one negotiated NBD connection. All methods are safe for
// concurrent use.
type Conn struct {
	conn      net.Conn
	size      int64
	flags     uint16
	maxReq    int64
	timeout   time.Duration
	contexts  map[string]uint32
	wmu       sync.Mutex // serializes requests on the wire
	mu        sync.Mutex // guards the fields below
	pending   map[uint64]*request
	nextID    uint64
	err       error // why the connection broke; set once
	done      chan struct{}
	closeOnce sync.Once
}

// request is an in-flight command awaiting its reply.
type request struct {
	cmd    uint16
	off    int64
	buf    []byte // READ destination
	got    int64  // bytes of buf filled by data and hole chunks
	ctxID  uint32
	ext    []Extent
	err    error
	doneCh chan struct{}
}

// Dial connects to an NBD server at addr on network ("unix" or "tcp") and
// negotiates the export. The context bounds the handshake only.
func Dial(ctx context.Context, network, addr string, opts Options) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(aLongTimeAgo) })
	c, err := handshake(nc, opts)
	if c != nil {
		c.timeout = opts.Timeout
	}
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = fmt.Errorf("nbd: handshake with %s: %w", addr, ctx.Err())
		}
		return nil, err
	}
	nc.SetDeadline(noDeadline)
	go c.readLoop(bufio.NewReaderSize(nc, 256<<10))
	return c, nil
}

var (
	aLongTimeAgo = time.Unix(1, 0)
	noDeadline   time.Time
)

func handshake(nc net.Conn, opts Options) (*Conn, error) {
	br := bufio.NewReader(nc)
	var hdr [18]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, fmt.Errorf("nbd: read greeting: %w", err)
	}
	if binary.BigEndian.Uint64(hdr[0:]) != nbdMagic || binary.BigEndian.Uint64(hdr[8:]) != optMagic {
		return nil, errors.New("nbd: greeting: not a fixed-newstyle NBD server")
	}
	sflags := binary.BigEndian.Uint16(hdr[16:])
	if sflags&flagFixedNewstyle == 0 {
		return nil, errors.New("nbd: greeting: server lacks fixed newstyle")
	}
	cflags := uint32(flagFixedNewstyle)
	if sflags&flagNoZeroes != 0 {
		cflags |= flagNoZeroes
	}
	if err := binary.Write(nc, binary.BigEndian, cflags); err != nil {
		return nil, fmt.Errorf("nbd: send client flags: %w", err)
	}
	c := &Conn{
		conn:     nc,
		maxReq:   defaultMaxRequest,
		contexts: map[string]uint32{},
		pending:  map[uint64]*request{},
		done:     make(chan struct{}),
	}
	// Structured replies: required for holes and block status.
	if err := sendOpt(nc, optStructuredReply, nil); err != nil {
		return nil, err
	}
	if err := readOptReplies(br, optStructuredReply, func(typ uint32, data []byte) error { return nil }); err != nil {
		return nil, err
	}
	if len(opts.MetaContexts) > 0 {
		var b []byte
		b = appendString(b, opts.Export)
		b = binary.BigEndian.AppendUint32(b, uint32(len(opts.MetaContexts)))
		for _, q := range opts.MetaContexts {
			b = appendString(b, q)
		}
		if err := sendOpt(nc, optSetMetaContext, b); err != nil {
			return nil, err
		}
		err := readOptReplies(br, optSetMetaContext, func(typ uint32, data []byte) error {
			if typ == repMetaContext && len(data) >= 4 {
				c.contexts[string(data[4:])] = binary.BigEndian.Uint32(data)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, q := range opts.MetaContexts {
			if _, ok := c.contexts[q]; !ok {
				return nil, fmt.Errorf("nbd: meta context %q not granted by export %q", q, opts.Export)
			}
		}
	}
	var b []byte
	b = appendString(b, opts.Export)
	b = binary.BigEndian.AppendUint16(b, 1)
	b = binary.BigEndian.AppendUint16(b, infoBlockSize)
	if err := sendOpt(nc, optGo, b); err != nil {
		return nil, err
	}
	gotExport := false
	err := readOptReplies(br, optGo, func(typ uint32, data []byte) error {
		if typ != repInfo || len(data) < 2 {
			return nil
		}
		switch binary.BigEndian.Uint16(data) {
		case infoExport:
			if len(data) < 12 {
				return errors.New("nbd: short NBD_INFO_EXPORT")
			}
			c.size = int64(binary.BigEndian.Uint64(data[2:]))
			c.flags = binary.BigEndian.Uint16(data[10:])
			gotExport = true
		case infoBlockSize:
			if len(data) >= 14 {
				if m := int64(binary.BigEndian.Uint32(data[10:])); m > 0 && m < c.maxReq {
					c.maxReq = m
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !gotExport {
		return nil, fmt.Errorf("nbd: export %q: server sent no size", opts.Export)
	}
	if br.Buffered() > 0 {
		return nil, errors.New("nbd: unexpected data after handshake")
	}
	return c, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func sendOpt(w io.Writer, opt uint32, data []byte) error {
	b := make([]byte, 0, 16+len(data))
	b = binary.BigEndian.AppendUint64(b, optMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("nbd: send option %d: %w", opt, err)
	}
	return nil
}

// readOptReplies reads replies to opt until NBD_REP_ACK, calling fn for
// each other reply; an error reply fails.
func readOptReplies(r io.Reader, opt uint32, fn func(typ uint32, data []byte) error) error {
	for {
		var h [20]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return fmt.Errorf("nbd: read reply to option %d: %w", opt, err)
		}
		if binary.BigEndian.Uint64(h[0:]) != optReplyMagic || binary.BigEndian.Uint32(h[8:]) != opt {
			return fmt.Errorf("nbd: bad reply to option %d", opt)
		}
		typ := binary.BigEndian.Uint32(h[12:])
		n := binary.BigEndian.Uint32(h[16:])
		if n > 1<<20 {
			return fmt.Errorf("nbd: reply to option %d too long (%d bytes)", opt, n)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return fmt.Errorf("nbd: read reply to option %d: %w", opt, err)
		}
		if typ&repErrBit != 0 {
			return &Error{Op: fmt.Sprintf("option %d", opt), Errno: typ, Message: string(data)}
		}
		if typ == repAck {
			return nil
		}
		if err := fn(typ, data); err != nil {
			return err
		}
	}
}

// Size is the export's size in bytes.
func (c *Conn) Size() int64 { return c.size }

// ReadOnly reports whether the server refuses writes.
func (c *Conn) ReadOnly() bool { return c.flags&transFlagReadOnly != 0 }

// CanMultiConn reports whether the server allows several connections to
// the export to be used at once consistently.
func (c *Conn) CanMultiConn() bool { return c.flags&transFlagMultiConn != 0 }

// MaxRequest is the largest read or write this connection sends in one
// request; larger ones are split.
func (c *Conn) MaxRequest() int64 { return c.maxReq }

// broken records the first fatal error and closes the connection, which
// ends readLoop; readLoop then fails the pending requests. Only readLoop
// completes requests, so once a request is done nothing writes into its
// buffer any more.
func (c *Conn) broken(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	c.mu.Unlock()
	c.conn.Close()
}

// sweep fails every pending request; readLoop calls it as it exits.
func (c *Conn) sweep() {
	c.mu.Lock()
	p := c.pending
	c.pending = map[uint64]*request{}
	err := c.err
	c.mu.Unlock()
	for _, r := range p {
		r.err = err
		close(r.doneCh)
	}
}

// send registers r and writes its request header (and payload). If it
// returns registered, r completes (possibly with an error) and must be
// waited for.
func (c *Conn) send(r *request, flags uint16, length uint32, payload []byte) (registered bool, err error) {
	r.doneCh = make(chan struct{})
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return false, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = r
	c.mu.Unlock()

	var h [28]byte
	binary.BigEndian.PutUint32(h[0:], requestMagic)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], r.cmd)
	binary.BigEndian.PutUint64(h[8:], id)
	binary.BigEndian.PutUint64(h[16:], uint64(r.off))
	binary.BigEndian.PutUint32(h[24:], length)
	c.wmu.Lock()
	if len(payload) > 0 {
		bufs := net.Buffers{h[:], payload}
		_, err = bufs.WriteTo(c.conn)
	} else {
		_, err = c.conn.Write(h[:])
	}
	c.wmu.Unlock()
	if err != nil {
		err = fmt.Errorf("nbd: send request: %w: %w", ErrClosed, err)
		c.broken(err)
		return true, err
	}
	return true, nil
}

// wait waits for r's reply. With a context that ends first, r is left to
// complete in the background and the context's error is returned.
func (c *Conn) wait(ctx context.Context, r *request) error {
	if ctx == nil {
		<-r.doneCh
		return r.err
	}
	select {
	case <-r.doneCh:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Conn) readLoop(br *bufio.Reader) {
	var h [32]byte
	for {
		if _, err := io.ReadFull(br, h[:4]); err != nil {
			c.broken(fmt.Errorf("nbd: read reply: %w: %w", ErrClosed, err))
			c.sweep()
			return
		}
		var err error
		switch binary.BigEndian.Uint32(h[:4]) {
		case simpleMagic:
			err = c.readSimple(br, h[:])
		case structuredMagic:
			err = c.readStructured(br, h[:])
		default:
			err = errors.New("bad reply magic")
		}
		if err != nil {
			c.broken(fmt.Errorf("nbd: read reply: %w: %w", ErrClosed, err))
			c.sweep()
			return
		}
	}
}

func (c *Conn) lookup(id uint64, final bool) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.pending[id]
	if final {
		delete(c.pending, id)
	}
	return r
}

func (c *Conn) readSimple(br *bufio.Reader, h []byte) error {
	if _, err := io.ReadFull(br, h[4:16]); err != nil {
		return err
	}
	errno := binary.BigEndian.Uint32(h[4:])
	id := binary.BigEndian.Uint64(h[8:])
	r := c.lookup(id, true)
	if r == nil {
		return fmt.Errorf("reply for unknown handle %d", id)
	}
	if errno != 0 {
		r.err = &Error{Op: cmdName(r.cmd), Errno: errno}
	} else if r.cmd == cmdRead {
		// Servers send a read's data in a simple reply only if
		// structured replies were refused; we always negotiate them,
		// but accept it anyway.
		if _, err := io.ReadFull(br, r.buf); err != nil {
			r.err = fmt.Errorf("nbd: read at %d: %w: %w", r.off, ErrClosed, err)
			close(r.doneCh)
			return err
		}
	}
	close(r.doneCh)
	return nil
}

func (c *Conn) readStructured(br *bufio.Reader, h []byte) error {
	if _, err := io.ReadFull(br, h[4:20]); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint16(h[4:])
	typ := binary.BigEndian.Uint16(h[6:])
	id := binary.BigEndian.Uint64(h[8:])
	n := int64(binary.BigEndian.Uint32(h[16:]))
	final := flags&replyFlagDone != 0
	r := c.lookup(id, final)
	if r == nil {
		return fmt.Errorf("reply for unknown handle %d", id)
	}
	err := c.readChunk(br, r, typ, n, final)
	if err != nil && final {
		// r is no longer pending, so breaking the connection would
		// not complete it: fail it here.
		r.err = fmt.Errorf("nbd: %s at %d: %w: %w", cmdName(r.cmd), r.off, ErrClosed, err)
		close(r.doneCh)
	}
	return err
}

// readChunk reads one structured chunk's payload for r and, if it is the
// last, completes r.
func (c *Conn) readChunk(br *bufio.Reader, r *request, typ uint16, n int64, final bool) error {
	switch typ {
	case replyNone:
		if n != 0 {
			return errors.New("NBD_REPLY_TYPE_NONE with payload")
		}
	case replyOffsetData:
		if r.cmd != cmdRead || n < 8 {
			return errors.New("unexpected OFFSET_DATA chunk")
		}
		var o [8]byte
		if _, err := io.ReadFull(br, o[:]); err != nil {
			return err
		}
		at := int64(binary.BigEndian.Uint64(o[:])) - r.off
		dn := n - 8
		if at < 0 || at+dn > int64(len(r.buf)) {
			return errors.New("OFFSET_DATA chunk outside the request")
		}
		if _, err := io.ReadFull(br, r.buf[at:at+dn]); err != nil {
			return err
		}
		r.got += dn
	case replyOffsetHole:
		if r.cmd != cmdRead || n != 12 {
			return errors.New("unexpected OFFSET_HOLE chunk")
		}
		var o [12]byte
		if _, err := io.ReadFull(br, o[:]); err != nil {
			return err
		}
		at := int64(binary.BigEndian.Uint64(o[:])) - r.off
		hn := int64(binary.BigEndian.Uint32(o[8:]))
		if at < 0 || at+hn > int64(len(r.buf)) {
			return errors.New("OFFSET_HOLE chunk outside the request")
		}
		clear(r.buf[at : at+hn])
		r.got += hn
	case replyBlockStatus:
		if r.cmd != cmdBlockStatus || n < 4 || (n-4)%8 != 0 {
			return errors.New("unexpected BLOCK_STATUS chunk")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		if binary.BigEndian.Uint32(b) == r.ctxID {
			off := r.off
			for p := b[4:]; len(p) >= 8; p = p[8:] {
				l := int64(binary.BigEndian.Uint32(p))
				r.ext = append(r.ext, Extent{Offset: off, Length: l, Flags: binary.BigEndian.Uint32(p[4:])})
				off += l
			}
		}
	case replyError, replyErrorOffset:
		if n < 6 {
			return errors.New("short error chunk")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return err
		}
		ml := int(binary.BigEndian.Uint16(b[4:]))
		msg := ""
		if 6+ml <= len(b) {
			msg = string(b[6 : 6+ml])
		}
		if r.err == nil {
			r.err = &Error{Op: cmdName(r.cmd), Errno: binary.BigEndian.Uint32(b), Message: msg}
		}
	default:
		if typ&(1<<15) != 0 && n >= 4 { // unknown error type
			b := make([]byte, n)
			if _, err := io.ReadFull(br, b); err != nil {
				return err
			}
			if r.err == nil {
				r.err = &Error{Op: cmdName(r.cmd), Errno: binary.BigEndian.Uint32(b)}
			}
		} else if _, err := br.Discard(int(n)); err != nil {
			return err
		}
	}
	if final {
		if r.err == nil && r.cmd == cmdRead && r.got != int64(len(r.buf)) {
			return fmt.Errorf("read at %d: server covered %d of %d bytes", r.off, r.got, len(r.buf))
		}
		close(r.doneCh)
	}
	return nil
}

func cmdName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdFlush:
		return "flush"
	case cmdBlockStatus:
		return "block status"
	}
	return fmt.Sprintf("command %d", cmd)
}

// ReadAt reads len(p) bytes at off, following io.ReaderAt with the export's
// size as the end. Reads larger than MaxRequest are split into pipelined
// requests.
func (c *Conn) ReadAt(p []byte, off int64) (int, error) {
	return c.ReadAtContext(nil, p, off)
}

// ReadAtContext is ReadAt bounded by ctx (nil means unbounded). When ctx
// ends first it returns its error; p may then still be written by replies
// that arrive later, so the caller must not reuse p.
func (c *Conn) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if off >= c.size {
		return 0, io.EOF
	}
	var eof error
	if rem := c.size - off; int64(len(p)) > rem {
		p, eof = p[:rem], io.EOF
	}
	if err := c.do(ctx, cmdRead, p, off); err != nil {
		return 0, err
	}
	return len(p), eof
}

// WriteAt writes p at off. The range must lie within the export.
func (c *Conn) WriteAt(p []byte, off int64) (int, error) {
	return c.WriteAtContext(nil, p, off)
}

// WriteAtContext is WriteAt bounded by ctx (nil means unbounded).
func (c *Conn) WriteAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > c.size {
		return 0, fmt.Errorf("nbd: write of %d bytes at %d outside the export (size %d)", len(p), off, c.size)
	}
	if c.ReadOnly() {
		return 0, &Error{Op: "write", Errno: 1, Message: "export is read-only"}
	}
	if err := c.do(ctx, cmdWrite, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// do runs a read or write of p at off as requests of at most maxReq bytes,
// all in flight at once.
func (c *Conn) do(ctx context.Context, cmd uint16, p []byte, off int64) error {
	if ctx == nil && c.timeout > 0 {
		// A server that does not answer in time is taken for hung: the
		// connection is closed, which completes every request.
		t := time.AfterFunc(c.timeout, func() {
			c.broken(fmt.Errorf("nbd: %s: no reply within %v: %w: %w", cmdName(cmd), c.timeout, ErrClosed, os.ErrDeadlineExceeded))
		})
		defer t.Stop()
	}
	var reqs []*request
	var first error
	for len(p) > 0 {
		n := min(int64(len(p)), c.maxReq)
		r := &request{cmd: cmd, off: off}
		var payload []byte
		if cmd == cmdRead {
			r.buf = p[:n]
		} else {
			payload = p[:n]
		}
		registered, err := c.send(r, 0, uint32(n), payload)
		if registered {
			reqs = append(reqs, r)
		}
		if err != nil {
			first = err
			break
		}
		p, off = p[n:], off+n
	}
	for _, r := range reqs {
		if err := c.wait(ctx, r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Flush asks the server to make all completed writes durable.
func (c *Conn) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	if c.flags&transFlagSendFlush == 0 {
		return nil
	}
	r := &request{cmd: cmdFlush}
	if _, err := c.send(r, 0, 0, nil); err != nil {
		return fmt.Errorf("nbd: flush: %w", err)
	}
	return c.wait(ctx, r)
}

// BlockStatus returns the extents of metadata context name (negotiated in
// Dial) for [off, off+length), clipped to the export. It issues as many
// requests as the server needs to cover the range (servers may answer for
// less than asked), so the extents returned cover it exactly, in order.
func (c *Conn) BlockStatus(ctx context.Context, name string, off, length int64) ([]Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("nbd: block status: %w", err)
	}
	id, ok := c.contexts[name]
	if !ok {
		return nil, fmt.Errorf("nbd: block status: meta context %q was not negotiated", name)
	}
	end := min(off+length, c.size)
	var out []Extent
	for off < end {
		n := min(end-off, maxBlockStatusQuery-1<<20)
		r := &request{cmd: cmdBlockStatus, off: off, ctxID: id}
		if _, err := c.send(r, 0, uint32(n), nil); err != nil {
			return nil, fmt.Errorf("nbd: block status: %w", err)
		}
		if err := c.wait(ctx, r); err != nil {
			return nil, err
		}
		if len(r.ext) == 0 {
			return nil, fmt.Errorf("nbd: block status at %d: no extents for context %q", off, name)
		}
		for _, e := range r.ext {
			if e.Length == 0 {
				return nil, fmt.Errorf("nbd: block status at %d: empty extent", off)
			}
			if e.Offset+e.Length > end {
				e.Length = end - e.Offset
			}
			if e.Length <= 0 {
				break
			}
			if k := len(out); k > 0 && out[k-1].Flags == e.Flags && out[k-1].Offset+out[k-1].Length == e.Offset {
				out[k-1].Length += e.Length
			} else {
				out = append(out, e)
			}
			off = e.Offset + e.Length
		}
	}
	return out, nil
}

// Close sends NBD_CMD_DISC and closes the connection. Requests still in
// flight fail with an error wrapping ErrClosed.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		alive := c.err == nil
		c.mu.Unlock()
		if alive {
			var h [28]byte
			binary.BigEndian.PutUint32(h[0:], requestMagic)
			binary.BigEndian.PutUint16(h[6:], cmdDisc)
			c.wmu.Lock()
			c.conn.Write(h[:])
			c.wmu.Unlock()
		}
		c.broken(fmt.Errorf("nbd: %w", ErrClosed))
	})
	return nil
}
