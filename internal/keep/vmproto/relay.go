package vmproto

import (
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

// The relay carries connections from the guest to the secret service the
// host was configured with (LaunchRequest.SecretServiceURL): a VM keep has
// no network, and fetches its config's [secrets.kbs] through it. The guest
// names no address: the host dials only its own service. TLS runs end to
// end between the keep and the service; the host moves ciphertext.
//
// Every stream is bounded on both sides: at most MaxStreams open at once,
// and per direction at most StreamWindow bytes sent and not yet read by
// the receiver (the receiver returns credit as its reader consumes). A
// peer that breaks a bound, names a stream that is not open, or reuses an
// id ends the session with an error. The host dials its service at most
// MaxOpens times per session and refuses later opens.

// Relay bounds.
const (
	MaxStreams   = 4        // relayed connections open at once
	StreamWindow = 64 << 10 // unread bytes a receiver buffers per stream
	// MaxRefusal bounds the reason of a refused open.
	MaxRefusal = 512
	// RelayDialTimeout bounds the host's connection to the service.
	RelayDialTimeout = 30 * time.Second
	// MaxOpens bounds the connections the host makes to the service for
	// one keep (a secret fetch needs a few); later opens are refused, so
	// that a guest cannot make the host dial the service, and log each
	// stream, without end.
	MaxOpens = 256
	// maxRelayEntries bounds the host's table: the MaxStreams open
	// streams and as many whose last frame (a refusal, or the second
	// close) is on its way to the guest. Each entry has at most two
	// goroutines of the host's; an open that finds the table full waits
	// until the guest reads (back-pressure), so a guest that opens and
	// never reads stalls only its own channel.
	maxRelayEntries = 2 * MaxStreams
)

// ErrRelayRefused wraps the host's refusal of an open.
var ErrRelayRefused = errors.New("the host refused a connection to the secret service")

// errSessionEnded is what a relayed connection returns once the channel ended.
var errSessionEnded = errors.New("vm channel: the session ended")

// DialFunc dials a network address (net.Dialer.DialContext's form).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// relayMux is one side's table of relayed streams.
type relayMux struct {
	guest bool
	send  func(typ byte, p []byte) error // the side's serialised frame writer

	mu      sync.Mutex
	streams map[uint32]*relayConn
	lastID  uint32 // guest: the last id it gave; host: the highest id opened
	dead    bool
	done    chan struct{} // closed at shutdown
	freed   chan struct{} // host: closed and replaced when an entry goes
	stalled bool          // host: an open waited for room (logged once)
	opens   int           // host: opens taken (dialled or refused)

	// Host only.
	addr   string // host:port of the service; "" = none
	dial   DialFunc
	event  func(string)
	ctx    context.Context // cancelled at shutdown (ends dials)
	cancel context.CancelFunc
	wg     sync.WaitGroup // the host's dial and pump goroutines
}

func newRelayMux(guest bool, send func(byte, []byte) error) *relayMux {
	m := &relayMux{guest: guest, send: send, streams: map[uint32]*relayConn{}, done: make(chan struct{}), freed: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// shutdown ends every stream (the channel ended). A host then waits for
// its relay goroutines.
func (m *relayMux) shutdown() {
	m.mu.Lock()
	if !m.dead {
		m.dead = true
		close(m.done)
	}
	ss := make([]*relayConn, 0, len(m.streams))
	for _, s := range m.streams {
		ss = append(ss, s)
	}
	m.mu.Unlock()
	m.cancel()
	for _, s := range ss {
		s.mu.Lock()
		s.dead = errSessionEnded
		hook := s.onPeerClose
		s.notify()
		s.mu.Unlock()
		if hook != nil {
			hook()
		}
	}
	m.wg.Wait()
}

func idPayload(id uint32, rest []byte) []byte {
	b := make([]byte, 4, 4+len(rest))
	binary.BigEndian.PutUint32(b, id)
	return append(b, rest...)
}

// parseID splits a relay payload into its stream id and the rest, which
// must be within [minRest, maxRest] bytes.
func parseID(typ byte, p []byte, minRest, maxRest int) (uint32, []byte, error) {
	if len(p) < 4+minRest || len(p) > 4+maxRest {
		return 0, nil, fmt.Errorf("%w: %q frame of %d bytes", ErrFrame, typ, len(p))
	}
	return binary.BigEndian.Uint32(p), p[4:], nil
}

// handle takes one relay frame from the peer. It never blocks on a
// stream's reader: bytes beyond the window are an error, not a wait.
func (m *relayMux) handle(typ byte, p []byte) error {
	switch typ {
	case FrameOpen:
		if m.guest {
			return fmt.Errorf("%w: open frame from the host", ErrFrame)
		}
		return m.hostOpen(p)
	case FrameAnswer:
		if !m.guest {
			return fmt.Errorf("%w: answer frame from the guest", ErrFrame)
		}
		return m.guestAnswer(p)
	}
	var (
		id   uint32
		rest []byte
		err  error
	)
	switch typ {
	case FrameBytes:
		id, rest, err = parseID(typ, p, 1, MaxData)
	case FrameCredit:
		id, rest, err = parseID(typ, p, 4, 4)
	default: // FrameFin, FrameClose
		id, rest, err = parseID(typ, p, 0, 0)
	}
	if err != nil {
		return err
	}
	m.mu.Lock()
	s := m.streams[id]
	m.mu.Unlock()
	if s == nil {
		return fmt.Errorf("%w: %q frame for stream %d, which is not open", ErrFrame, typ, id)
	}
	s.mu.Lock()
	if !s.ready {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q frame for stream %d before its open was answered", ErrFrame, typ, id)
	}
	if s.peerClosed {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q frame for stream %d after its close", ErrFrame, typ, id)
	}
	var closed bool
	switch typ {
	case FrameBytes:
		switch {
		case s.peerFin:
			err = fmt.Errorf("%w: bytes for stream %d after its end", ErrFrame, id)
		case s.sentClose || s.localClosed:
			// We dropped the stream; bytes already in flight are discarded.
		case len(s.buf)+len(rest) > StreamWindow:
			err = fmt.Errorf("%w: stream %d: more than %d unread bytes (beyond its window)", ErrFrame, id, StreamWindow)
		default:
			s.buf = append(s.buf, rest...)
		}
	case FrameCredit:
		n := int(binary.BigEndian.Uint32(rest))
		if s.credit+n > StreamWindow {
			err = fmt.Errorf("%w: stream %d: credit beyond its window of %d bytes", ErrFrame, id, StreamWindow)
		} else {
			s.credit += n
		}
	case FrameFin:
		if s.peerFin {
			err = fmt.Errorf("%w: two ends of stream %d", ErrFrame, id)
		}
		s.peerFin = true
	case FrameClose:
		s.peerClosed, closed = true, true
	}
	s.notify()
	hook := s.onPeerClose
	s.mu.Unlock()
	if closed {
		if hook != nil {
			hook()
		}
		// The peer dropped the stream: drop ours too (no more frames of
		// ours may follow its close), then forget it.
		go func() {
			s.sendClose()
			m.release(s)
		}()
	}
	return err
}

// release forgets s once both sides sent their close: its id is then
// dead, and it no longer counts against MaxStreams.
func (m *relayMux) release(s *relayConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s.mu.Lock()
	both := s.sentClose && s.peerClosed
	s.mu.Unlock()
	if both && m.streams[s.id] == s {
		m.forgetLocked(s)
	}
}

// forget drops the host's entry of a refused open once its refusal went.
func (m *relayMux) forget(s *relayConn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.streams[s.id] == s {
		m.forgetLocked(s)
	}
}

// forgetLocked deletes s and wakes an open waiting for room (m.mu held).
func (m *relayMux) forgetLocked(s *relayConn) {
	delete(m.streams, s.id)
	close(m.freed)
	m.freed = make(chan struct{})
}

// liveLocked counts the streams that the guest counts too (m.mu held):
// not those whose last frame the host is sending (a refusal, or its close
// after the guest's), which the guest may have forgotten already.
func (m *relayMux) liveLocked() int {
	n := 0
	for _, s := range m.streams {
		s.mu.Lock()
		if !s.refused && !(s.sentClose && s.peerClosed) {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

// open is the guest's dial: a new stream id, an open frame, the host's
// answer.
func (m *relayMux) open(ctx context.Context) (net.Conn, error) {
	m.mu.Lock()
	if m.dead {
		m.mu.Unlock()
		return nil, errSessionEnded
	}
	if n := m.liveLocked(); n >= MaxStreams {
		m.mu.Unlock()
		return nil, fmt.Errorf("vm channel: %d connections to the secret service open already, at most %d", n, MaxStreams)
	}
	m.lastID++
	s := newRelayConn(m, m.lastID)
	s.answer = make(chan string, 1)
	m.streams[s.id] = s
	m.mu.Unlock()
	if err := m.send(FrameOpen, idPayload(s.id, nil)); err != nil {
		return nil, err
	}
	select {
	case reason := <-s.answer:
		if reason != "" {
			return nil, fmt.Errorf("%w: %s", ErrRelayRefused, reason)
		}
		return s, nil
	case <-m.done:
		return nil, errSessionEnded
	case <-ctx.Done():
		m.mu.Lock()
		defer m.mu.Unlock()
		select {
		case reason := <-s.answer:
			if reason == "" {
				go s.Close()
			}
		default:
			s.abandoned = true // the answer closes it
		}
		return nil, ctx.Err()
	}
}

// guestAnswer takes the host's answer to an open: empty = connected.
func (m *relayMux) guestAnswer(p []byte) error {
	id, reason, err := parseID(FrameAnswer, p, 0, MaxRefusal)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.streams[id]
	if s == nil || s.answer == nil {
		return fmt.Errorf("%w: answer for stream %d, which was not opened", ErrFrame, id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ready {
		return fmt.Errorf("%w: two answers for stream %d", ErrFrame, id)
	}
	if len(reason) > 0 {
		delete(m.streams, id) // refused: the id is dead on both sides
		if !s.abandoned {
			s.answer <- printable(reason)
		}
		return nil
	}
	s.ready = true
	if s.abandoned {
		go s.Close()
	} else {
		s.answer <- ""
	}
	return nil
}

// hostOpen takes the guest's open: a new id within the bounds, dialled to
// the host's own service (or refused when the host has none).
func (m *relayMux) hostOpen(p []byte) error {
	id, _, err := parseID(FrameOpen, p, 0, 0)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if id <= m.lastID {
		return fmt.Errorf("%w: open of stream %d: not a new stream id (the last was %d)", ErrFrame, id, m.lastID)
	}
	if n := m.liveLocked(); n >= MaxStreams {
		return fmt.Errorf("%w: open of stream %d: %d streams open already, at most %d", ErrFrame, id, n, MaxStreams)
	}
	m.lastID = id
	// The guest has not read the last frames of earlier streams: wait
	// for it rather than start more goroutines that would wait too.
	for len(m.streams) >= maxRelayEntries && !m.dead {
		if !m.stalled {
			m.stalled = true
			m.event(fmt.Sprintf("secret service relay: stream %d waits: the guest does not read the host's answers", id))
		}
		freed := m.freed
		m.mu.Unlock()
		<-freed
		m.mu.Lock()
	}
	if m.dead {
		return nil
	}
	s := newRelayConn(m, id)
	m.streams[id] = s
	m.opens++
	var refusal string
	switch {
	case m.addr == "":
		refusal = "this keep was started with no attestation service to fetch secrets from"
		m.event(fmt.Sprintf("secret service relay: stream %d refused: this keep was started with no attestation service", id))
	case m.opens > MaxOpens:
		refusal = fmt.Sprintf("this keep opened %d connections to the secret service already, at most %d", MaxOpens, MaxOpens)
		if m.opens == MaxOpens+1 {
			m.event(fmt.Sprintf("secret service relay: stream %d and later ones refused: the keep opened %d connections already", id, MaxOpens))
		}
	}
	if refusal != "" {
		s.refused = true
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.send(FrameAnswer, idPayload(id, []byte(refusal)))
			m.forget(s)
		}()
		return nil
	}
	m.wg.Add(1)
	go m.serveStream(s)
	return nil
}

// serveStream dials the service for s and relays both ways until both
// directions ended or either side dropped the stream.
func (m *relayMux) serveStream(s *relayConn) {
	defer m.wg.Done()
	start := time.Now()
	ctx, cancel := context.WithTimeout(m.ctx, RelayDialTimeout)
	c, err := m.dial(ctx, "tcp", m.addr)
	cancel()
	if err != nil {
		s.mu.Lock()
		s.refused = true // its entry goes once the refusal went
		s.mu.Unlock()
		m.event(fmt.Sprintf("secret service relay: stream %d: cannot connect to %s: %v", s.id, m.addr, err))
		m.send(FrameAnswer, idPayload(s.id, []byte(truncateReason("the host cannot connect to the secret service: "+err.Error()))))
		m.forget(s)
		return
	}
	s.mu.Lock()
	s.onPeerClose = func() { c.Close() }
	dead := s.dead != nil || s.peerClosed
	s.ready = true
	s.mu.Unlock()
	if dead {
		c.Close()
		return
	}
	m.event(fmt.Sprintf("secret service relay: stream %d open to %s (%dms to connect)", s.id, m.addr, time.Since(start).Milliseconds()))
	if err := m.send(FrameAnswer, idPayload(s.id, nil)); err != nil {
		c.Close()
		return
	}
	var toService, fromService int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		fromService, _ = io.Copy(s, c)
		s.CloseWrite()
	}()
	toService, _ = io.Copy(c, s)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		c.Close()
	}
	wg.Wait()
	c.Close()
	s.Close()
	m.release(s)
	m.event(fmt.Sprintf("secret service relay: stream %d to %s closed after %dms: %d bytes to the service, %d from it",
		s.id, m.addr, time.Since(start).Milliseconds(), toService, fromService))
}

func truncateReason(s string) string {
	if len(s) > MaxRefusal {
		return s[:MaxRefusal]
	}
	return s
}

// relayConn is one relayed stream, as a net.Conn (with CloseWrite).
type relayConn struct {
	m  *relayMux
	id uint32

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced on every change
	buf         []byte        // the peer's bytes not yet read (≤ StreamWindow)
	credit      int           // bytes we may still send
	ready       bool          // the open was answered
	peerFin     bool
	peerClosed  bool
	localClosed bool
	finSent     bool
	sentClose   bool
	dead        error // the session ended
	rdl, wdl    time.Time
	onPeerClose func() // host: closes the service connection
	refused     bool   // host: the open is being refused (the id is dead)

	answer    chan string // guest: the host's answer to the open
	abandoned bool        // guest: the dialler gave up before the answer

	fmu sync.Mutex // orders the stream's frames: nothing after its close
	wmu sync.Mutex // serialises Writes
}

var _ net.Conn = (*relayConn)(nil)

func newRelayConn(m *relayMux, id uint32) *relayConn {
	return &relayConn{m: m, id: id, changed: make(chan struct{}), credit: StreamWindow}
}

// notify wakes the waiters (s.mu held).
func (s *relayConn) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// wait waits for a change or the deadline (s.mu held; released while
// waiting).
func (s *relayConn) wait(dl time.Time) error {
	ch := s.changed
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	s.mu.Unlock()
	select {
	case <-ch:
	case <-timeout:
	}
	s.mu.Lock()
	return nil
}

// frame sends one frame of the stream; none after its close.
func (s *relayConn) frame(typ byte, rest []byte) error {
	s.fmu.Lock()
	defer s.fmu.Unlock()
	s.mu.Lock()
	if s.sentClose || (typ == FrameFin && s.finSent) {
		s.mu.Unlock()
		return net.ErrClosed
	}
	switch typ {
	case FrameFin:
		s.finSent = true
	case FrameClose:
		s.sentClose = true
	}
	s.mu.Unlock()
	return s.m.send(typ, idPayload(s.id, rest))
}

func (s *relayConn) sendClose() { s.frame(FrameClose, nil) }

func (s *relayConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.mu.Lock()
	for {
		switch {
		case s.localClosed:
			s.mu.Unlock()
			return 0, net.ErrClosed
		case len(s.buf) > 0:
			n := copy(p, s.buf)
			s.buf = s.buf[n:]
			if len(s.buf) == 0 {
				s.buf = nil
			}
			s.mu.Unlock()
			var c [4]byte
			binary.BigEndian.PutUint32(c[:], uint32(n))
			s.frame(FrameCredit, c[:]) // fails only once the stream or session is gone
			return n, nil
		case s.peerFin || s.peerClosed:
			s.mu.Unlock()
			return 0, io.EOF
		case s.dead != nil:
			s.mu.Unlock()
			return 0, s.dead
		}
		if err := s.wait(s.rdl); err != nil {
			s.mu.Unlock()
			return 0, err
		}
	}
}

func (s *relayConn) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n := 0
	for len(p) > 0 {
		c, err := s.reserve(len(p))
		if err != nil {
			return n, err
		}
		if err := s.frame(FrameBytes, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

// reserve waits for credit and takes up to want bytes of it (one frame's
// worth at most).
func (s *relayConn) reserve(want int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		switch {
		case s.localClosed || s.finSent:
			return 0, net.ErrClosed
		case s.peerClosed:
			return 0, errors.New("vm channel: the stream was closed by the other side")
		case s.dead != nil:
			return 0, s.dead
		case s.credit > 0:
			c := min(s.credit, MaxData, want)
			s.credit -= c
			return c, nil
		}
		if err := s.wait(s.wdl); err != nil {
			return 0, err
		}
	}
}

// CloseWrite tells the other side that no more bytes come.
func (s *relayConn) CloseWrite() error { return s.frame(FrameFin, nil) }

// Close drops the stream: reads and writes end, the other side is told.
func (s *relayConn) Close() error {
	s.mu.Lock()
	if s.localClosed {
		s.mu.Unlock()
		return nil
	}
	s.localClosed = true
	s.buf = nil
	s.notify()
	s.mu.Unlock()
	s.sendClose()
	s.m.release(s)
	return nil
}

func (s *relayConn) LocalAddr() net.Addr  { return relayAddr(s.id) }
func (s *relayConn) RemoteAddr() net.Addr { return relayAddr(s.id) }

func (s *relayConn) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl, s.wdl = t, t
	s.notify()
	s.mu.Unlock()
	return nil
}

func (s *relayConn) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl = t
	s.notify()
	s.mu.Unlock()
	return nil
}

func (s *relayConn) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl = t
	s.notify()
	s.mu.Unlock()
	return nil
}

// relayAddr names a relayed stream.
type relayAddr uint32

func (a relayAddr) Network() string { return "vm-relay" }
func (a relayAddr) String() string  { return fmt.Sprintf("vm relay stream %d", uint32(a)) }
