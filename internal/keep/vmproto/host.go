package vmproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Event is a log line or a state change reported by the guest.
type Event struct {
	Kind string    // EventLog or EventState
	Text string    // the log line, or the new state ("running")
	Time time.Time // when the host read it
}

// Event kinds.
const (
	EventLog   = "log"
	EventState = "state"
)

// EventBuffer is how many events the host keeps for a slow reader; more
// are dropped and counted (the host never blocks on its own log).
const EventBuffer = 1024

// ErrNoExit is returned by Wait when the channel ended without an exit
// status (the VM died, or the guest broke the protocol).
var ErrNoExit = errors.New("the keep ended without an exit status")

// Host is the host's side of one VM keep's channel.
type Host struct {
	conn  io.ReadWriteCloser
	wmu   sync.Mutex // serialises frames to the guest
	hello []byte

	events  chan Event
	dropped atomic.Int64

	ours    net.Conn // our end of the pipe whose other end Stream reads
	stream  *hostStream
	relay   *relayMux // connections to the secret service
	done    chan struct{}
	exit    *Exit
	waitErr error
	closeMu sync.Once
}

// Handshake runs the host's side of the channel on conn (the VM's
// virtio-serial socket): it waits for the guest's version, sends req and
// waits for the keep's hello. ctx bounds the handshake only (the guest's
// boot and its evidence); when it ends, conn is closed. On success the
// Host reads the channel until the guest's exit status; call Wait for it
// and Close to end the session early.
//
// When the guest fails before its hello, Handshake returns an error that
// carries the guest's reason, and a nil Host.
//
// After the hello the Host relays the guest's connections to the secret
// service that req names (SecretServiceURL: the host dials its host:port
// and nothing else), or refuses them when req names none; each open and
// close is a log event.
func Handshake(ctx context.Context, conn io.ReadWriteCloser, req *LaunchRequest, opts ...HostOption) (*Host, error) {
	if err := req.Check(); err != nil {
		return nil, err
	}
	var o hostOptions
	for _, opt := range opts {
		opt(&o)
	}
	lb, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	h := &Host{conn: conn, events: make(chan Event, EventBuffer), done: make(chan struct{})}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	fail := func(err error) (*Host, error) {
		stop()
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("vm keep: no hello: %w", ctx.Err())
		}
		return nil, fmt.Errorf("vm keep: %w", err)
	}
	typ, p, err := readFrame(conn)
	if err != nil {
		return fail(fmt.Errorf("waiting for the guest: %w", err))
	}
	if typ != FrameVersion || string(p) != Version {
		return fail(fmt.Errorf("%w: the guest's first frame is %q %q, want version %s", ErrFrame, typ, printable(p), Version))
	}
	if err := h.send(FrameLaunch, lb); err != nil {
		return fail(fmt.Errorf("sending the launch request: %w", err))
	}
	for h.hello == nil {
		typ, p, err := readFrame(conn)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the guest closed the channel before its hello")
			}
			return fail(err)
		}
		switch typ {
		case FrameHello:
			if len(p) == 0 {
				return fail(fmt.Errorf("%w: empty hello", ErrFrame))
			}
			h.hello = p
		case FrameLog, FrameState:
			h.event(typ, p)
		case FrameExit:
			x, err := ParseExit(p)
			if err != nil {
				return fail(err)
			}
			return fail(fmt.Errorf("the keep failed before its hello: %s", x.Reason))
		default:
			return fail(fmt.Errorf("%w: %q frame before the hello", ErrFrame, typ))
		}
	}
	if !stop() {
		// ctx ended as the hello arrived: conn is being closed.
		conn.Close()
		return nil, fmt.Errorf("vm keep: no hello: %w", ctx.Err())
	}
	userEnd, ours := net.Pipe()
	h.ours = ours
	h.stream = &hostStream{Conn: userEnd, h: h}
	h.relay = h.newRelay(req, o)
	go h.demux()
	return h, nil
}

// Hello returns the keep's hello (JSON of delivery.Hello), unchecked:
// the caller parses it with delivery.ParseHello.
func (h *Host) Hello() []byte { return h.hello }

// Stream returns the relayed delivery byte stream to and from the keep.
// Its CloseWrite ends the bytes to the keep; Close also drops what the
// keep still sends. Deadlines apply to reads (a write waits for the
// channel). The caller reads it or closes it: the channel's later frames
// (logs, exit status) wait behind unread bytes.
func (h *Host) Stream() net.Conn { return h.stream }

// Events returns the keep's log lines and state changes, closed when the
// channel ends. Events that find the buffer full are dropped; a last log
// event says how many.
func (h *Host) Events() <-chan Event { return h.events }

// Wait blocks until the channel ends and returns the guest's exit
// status, or ErrNoExit (wrapped with the cause) without one. The channel
// ends with the guest's exit frame, with QEMU's death (its socket closes),
// or with Close: a launcher that kills the VM at its wall time unblocks it.
func (h *Host) Wait() (*Exit, error) {
	<-h.done
	return h.exit, h.waitErr
}

// Done is closed when the channel has ended.
func (h *Host) Done() <-chan struct{} { return h.done }

// Close ends the session: it closes the channel (the launcher then stops
// the VM). Wait returns once the reader has stopped.
func (h *Host) Close() error {
	h.closeMu.Do(func() {
		h.conn.Close()
		h.ours.Close() // unblocks a demux waiting on a reader
	})
	return nil
}

func (h *Host) send(typ byte, p []byte) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	return writeFrame(h.conn, typ, p)
}

func (h *Host) event(typ byte, p []byte) {
	e := Event{Kind: EventLog, Text: printable(p), Time: time.Now()}
	if typ == FrameState {
		e.Kind = EventState
	}
	select {
	case h.events <- e:
	default:
		h.dropped.Add(1)
	}
}

// HostOption configures Handshake.
type HostOption func(*hostOptions)

type hostOptions struct {
	dial DialFunc
}

// WithRelayDial makes the relay connect to the secret service with d
// instead of a net.Dialer (tests). d is only ever asked for the host:port
// of the launch request's SecretServiceURL.
func WithRelayDial(d DialFunc) HostOption {
	return func(o *hostOptions) { o.dial = d }
}

// newRelay is the host's relay for the keep that req launched.
func (h *Host) newRelay(req *LaunchRequest, o hostOptions) *relayMux {
	m := newRelayMux(false, h.send)
	m.addr = req.serviceAddr()
	m.dial = o.dial
	if m.dial == nil {
		m.dial = (&net.Dialer{}).DialContext
	}
	m.event = h.note
	return m
}

// note is a log event of the host's own (the relay's opens and closes).
func (h *Host) note(text string) {
	select {
	case h.events <- Event{Kind: EventLog, Text: text, Time: time.Now()}:
	default:
		h.dropped.Add(1)
	}
}

// demux reads the guest's frames after the hello until its exit.
func (h *Host) demux() {
	defer close(h.done)
	defer close(h.events)
	defer h.conn.Close()
	err := h.readLoop()
	h.ours.Close()
	// The relay's goroutines may still send: the channel is closed first,
	// so that none of them waits on a guest that no longer reads.
	h.conn.Close()
	h.relay.shutdown()
	if h.exit == nil {
		if err == nil || errors.Is(err, io.EOF) {
			h.waitErr = ErrNoExit
		} else {
			h.waitErr = fmt.Errorf("%w: %w", ErrNoExit, err)
		}
	}
	if n := h.dropped.Load(); n > 0 {
		// The channel is closed for good: a blocking send would hang, so
		// the note replaces the oldest event if needed.
		e := Event{Kind: EventLog, Text: fmt.Sprintf("(%d keep log lines dropped: no reader)", n), Time: time.Now()}
		select {
		case h.events <- e:
		default:
			select {
			case <-h.events:
			default:
			}
			select {
			case h.events <- e:
			default:
			}
		}
	}
}

func (h *Host) readLoop() error {
	ended := false // the guest sent E
	discard := false
	for {
		typ, p, err := readFrame(h.conn)
		if err != nil {
			return err
		}
		switch typ {
		case FrameData:
			if ended {
				return fmt.Errorf("%w: data after its end", ErrFrame)
			}
			if !discard {
				if _, err := h.ours.Write(p); err != nil {
					discard = true // the stream was closed: drop the rest
				}
			}
		case FrameEOF:
			if ended {
				return fmt.Errorf("%w: two ends of data", ErrFrame)
			}
			ended = true
			h.ours.Close() // the stream reads EOF; its writes still go
		case FrameLog, FrameState:
			h.event(typ, p)
		case FrameOpen, FrameAnswer, FrameBytes, FrameCredit, FrameFin, FrameClose:
			if err := h.relay.handle(typ, p); err != nil {
				return err
			}
		case FrameExit:
			x, err := ParseExit(p)
			if err != nil {
				return err
			}
			h.exit = x
			return nil
		default:
			return fmt.Errorf("%w: %q frame after the hello", ErrFrame, typ)
		}
	}
}

// hostStream is Host.Stream: reads (with deadlines) from a pipe the
// demux fills, writes straight to the channel as data frames.
type hostStream struct {
	net.Conn
	h         *Host
	wclose    sync.Once
	closeOnce sync.Once
	wmu       sync.Mutex
	closedW   bool
}

var _ net.Conn = (*hostStream)(nil)

func (s *hostStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closedW {
		return 0, net.ErrClosed
	}
	n := 0
	for len(p) > 0 {
		c := min(len(p), MaxData)
		if err := s.h.send(FrameData, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// CloseWrite tells the guest that no more bytes come.
func (s *hostStream) CloseWrite() error {
	var err error
	s.wclose.Do(func() {
		s.wmu.Lock()
		s.closedW = true
		s.wmu.Unlock()
		err = s.h.send(FrameEOF, nil)
	})
	return err
}

// Close ends both directions of the stream (not the channel: the guest's
// logs and exit status still arrive). The reading side goes first: the
// channel's reader then drops the guest's bytes, even while the end of
// data waits for a guest that does not read.
func (s *hostStream) Close() error {
	s.closeOnce.Do(func() {
		s.Conn.Close()
		s.CloseWrite()
	})
	return nil
}

// printable returns p as a valid UTF-8 string without control characters
// other than tab, for logs.
func printable(p []byte) string {
	b := make([]rune, 0, len(p))
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		p = p[n:]
		if r == utf8.RuneError || (r < 0x20 && r != '\t') || r == 0x7f {
			r = '?'
		}
		b = append(b, r)
	}
	return string(b)
}

// Dial connects to the VM's channel socket at path (QEMU's chardev
// server), retrying until QEMU has created it or ctx ends.
func Dial(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	for {
		c, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm channel %s: %w (last: %v)", path, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
