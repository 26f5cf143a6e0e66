// Package qmp is a minimal client for the QEMU Machine Protocol (QMP), the
// JSON protocol QEMU and qemu-storage-daemon speak on their monitor socket,
// and for the guest agent protocol (qemu-ga), which is QMP without the
// greeting.
//
// A [Client] sends commands with ids and matches replies by id, so commands
// may be issued from many goroutines. One goroutine reads the socket; it
// never blocks on a slow consumer: asynchronous events are appended to the
// unbounded queue of every [Subscription] that wants them. Replies have no
// size limit.
//
// To wait for an event a command causes (BLOCK_JOB_CANCELLED after
// block-job-cancel), subscribe before executing the command, so the event
// cannot be missed:
//
//	sub := c.Subscribe(func(e qmp.Event) bool { return e.Event == "BLOCK_JOB_CANCELLED" })
//	defer sub.Close()
//	if err := c.Execute(ctx, "block-job-cancel", args, nil); err != nil { ... }
//	ev, err := sub.Wait(ctx)
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrClosed is wrapped by the errors of commands on a closed or broken
// connection.
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error reply to a command.
type Error struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// Client is a QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn    net.Conn
	wmu     sync.Mutex
	mu      sync.Mutex
	pending map[uint64]chan message
	subs    map[*Subscription]struct{}
	nextID  uint64
	err     error
	done    chan struct{}
}

type message struct {
	ID     *uint64         `json:"id"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	QMP    json.RawMessage `json:"QMP"`
}

// GreetingTimeout bounds the wait for QEMU's greeting in Dial. QEMU
// serves one client per QMP socket, so a socket another client holds
// accepts the connection but never greets.
const GreetingTimeout = 10 * time.Second

// Dial connects to a QMP unix socket, reads the greeting and enters command
// mode (qmp_capabilities).
func Dial(ctx context.Context, path string) (*Client, error) {
	return dial(ctx, path, true)
}

// DialAgent connects to a qemu-ga (guest agent) unix socket. The agent sends
// no greeting; the caller should start with guest-sync.
func DialAgent(ctx context.Context, path string) (*Client, error) {
	return dial(ctx, path, false)
}

func dial(ctx context.Context, path string, greeting bool) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c := &Client{
		conn:    nc,
		pending: map[uint64]chan message{},
		subs:    map[*Subscription]struct{}{},
		done:    make(chan struct{}),
	}
	dec := json.NewDecoder(bufio.NewReader(nc))
	if greeting {
		// QEMU serves one client per QMP socket: while another is
		// connected, the greeting never comes.
		gctx, cancel := context.WithTimeout(ctx, GreetingTimeout)
		defer cancel()
		stop := context.AfterFunc(gctx, func() { nc.Close() })
		var m message
		err := dec.Decode(&m)
		if !stop() {
			err = gctx.Err()
			if ctx.Err() == nil {
				err = fmt.Errorf("none within %v (is another client connected?): %w", GreetingTimeout, err)
			}
		}
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("qmp: read greeting from %s: %w", path, err)
		}
		if m.QMP == nil {
			nc.Close()
			return nil, fmt.Errorf("qmp: %s: no QMP greeting", path)
		}
	}
	go c.readLoop(dec)
	if greeting {
		if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Client) readLoop(dec *json.Decoder) {
	for {
		var m message
		if err := dec.Decode(&m); err != nil {
			c.fail(fmt.Errorf("%w: %w", ErrClosed, err))
			return
		}
		if m.Event != "" {
			c.mu.Lock()
			for s := range c.subs {
				s.push(Event{Event: m.Event, Data: m.Data})
			}
			c.mu.Unlock()
			continue
		}
		if m.ID == nil {
			continue // a reply without id (none are sent by us)
		}
		c.mu.Lock()
		ch := c.pending[*m.ID]
		delete(c.pending, *m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	p := c.pending
	c.pending = map[uint64]chan message{}
	c.mu.Unlock()
	for _, ch := range p {
		close(ch)
	}
	c.conn.Close()
}

// Done is closed when the connection ends (the process exited, Close).
func (c *Client) Done() <-chan struct{} { return c.done }

// Execute runs command with args (nil or anything that marshals to a JSON
// object) and unmarshals the reply's "return" into result (nil to ignore
// it). An error reply is an *Error. If ctx ends first, Execute returns its
// error; the command may still take effect.
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{Execute: command, Arguments: args}
	ch := make(chan message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.nextID++
	req.ID = c.nextID
	c.pending[req.ID] = ch
	c.mu.Unlock()
	b, err := json.Marshal(req)
	if err != nil {
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: encode arguments: %w", command, err)
	}
	c.wmu.Lock()
	_, err = c.conn.Write(append(b, '\n'))
	c.wmu.Unlock()
	if err != nil {
		c.fail(fmt.Errorf("%w: %w", ErrClosed, err))
		return fmt.Errorf("qmp: %s: %w", command, c.err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp: %s: %w", command, c.err)
		}
		if m.Error != nil {
			m.Error.Command = command
			return m.Error
		}
		if result != nil {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp: %s: decode reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, req.ID)
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	}
}

// HumanMonitorCommand runs an HMP command line and returns its output.
func (c *Client) HumanMonitorCommand(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": cmdline}, &out)
	return out, err
}

// Close closes the connection. Commands in flight fail with ErrClosed.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	return nil
}

// Subscription is a queue of the events matching its filter, received after
// Subscribe returned. The queue is unbounded, so the reader never waits.
type Subscription struct {
	c      *Client
	match  func(Event) bool
	mu     sync.Mutex
	queue  []Event
	signal chan struct{}
}

// Subscribe starts queueing the events for which match returns true (all
// events if match is nil). match runs on the reading goroutine and must be
// quick. Close the subscription when done.
func (c *Client) Subscribe(match func(Event) bool) *Subscription {
	s := &Subscription{c: c, match: match, signal: make(chan struct{}, 1)}
	c.mu.Lock()
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return s
}

func (s *Subscription) push(e Event) {
	if s.match != nil && !s.match(e) {
		return
	}
	s.mu.Lock()
	s.queue = append(s.queue, e)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// Wait returns the next queued event, waiting until one arrives, the
// connection ends (an error wrapping ErrClosed) or ctx ends.
func (s *Subscription) Wait(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue = s.queue[1:]
			s.mu.Unlock()
			return e, nil
		}
		s.mu.Unlock()
		select {
		case <-s.signal:
		case <-s.c.done:
			// Deliver what was queued before the end.
			s.mu.Lock()
			n := len(s.queue)
			s.mu.Unlock()
			if n == 0 {
				return Event{}, fmt.Errorf("qmp: wait for event: %w", ErrClosed)
			}
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: wait for event: %w", ctx.Err())
		}
	}
}

// Close stops queueing events.
func (s *Subscription) Close() {
	s.c.mu.Lock()
	delete(s.c.subs, s)
	s.c.mu.Unlock()
}
