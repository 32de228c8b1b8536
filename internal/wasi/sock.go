package wasi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
)

// pumpMax is how much plaintext a connection buffers ahead of the guest;
// past it the reader stops and TCP flow control slows the peer down.
const pumpMax = 64 << 10

// pump reads r in its own goroutine into a buffer the guest drains, so
// that reads can be polled and never block the guest's thread (TLS
// handshakes included).
type pump struct {
	s         *System
	r         io.Reader
	handshake func() error // run first, in the goroutine
	// stopAfterHandshake: the guest's thread reads once the handshake is
	// done (TLS on a direct socket); the goroutine only shakes hands.
	stopAfterHandshake bool

	mu     sync.Mutex
	cond   *sync.Cond // wakes the reader when the buffer drains or on close
	buf    []byte
	err    error // io.EOF at the end, or why reading stopped
	closed bool
}

func newPump(s *System, r io.Reader, handshake func() error) *pump {
	p := &pump{s: s, r: r, handshake: handshake}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// start runs the reader; tracked pumps are waited for by System.Close.
func (p *pump) start(tracked bool) {
	if tracked {
		p.s.pumps.Add(1)
	}
	go func() {
		if tracked {
			defer p.s.pumps.Done()
		}
		p.run()
	}()
}

func (p *pump) run() {
	if p.handshake != nil {
		if err := p.handshake(); err != nil {
			p.fail(err)
			return
		}
		if p.stopAfterHandshake {
			p.s.wake()
			return
		}
	}
	tmp := make([]byte, 32<<10)
	for {
		p.mu.Lock()
		for len(p.buf) >= pumpMax && !p.closed {
			p.cond.Wait()
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			return
		}
		n, err := p.r.Read(tmp)
		p.mu.Lock()
		p.buf = append(p.buf, tmp[:n]...)
		if err != nil && p.err == nil {
			p.err = err
		}
		p.mu.Unlock()
		p.s.wake()
		if err != nil {
			return
		}
	}
}

func (p *pump) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
	p.s.wake()
}

func (p *pump) close() {
	p.mu.Lock()
	p.closed = true
	p.cond.Broadcast()
	p.mu.Unlock()
}

// read copies buffered bytes into iovs, waiting for some unless nonblock.
// It returns 0 bytes at the end of the stream.
func (p *pump) read(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	for {
		ch := p.s.waiter()
		p.mu.Lock()
		if len(p.buf) > 0 {
			n := 0
			for _, b := range iovs {
				n += copy(b, p.buf[n:])
				if n == len(p.buf) {
					break
				}
			}
			if !p.closed && !peek {
				rest := copy(p.buf, p.buf[n:])
				p.buf = p.buf[:rest]
				p.cond.Signal()
			}
			p.mu.Unlock()
			return n, errSuccess
		}
		err, closed := p.err, p.closed
		p.mu.Unlock()
		switch {
		case closed:
			return 0, errBadf
		case err == io.EOF:
			return 0, errSuccess
		case err != nil:
			return 0, sockErrno(err)
		case nonblock:
			return 0, errAgain
		}
		p.s.wait(ctx, ch, nil)
	}
}

// readiness reports whether a read would not block: the bytes buffered,
// whether the stream ended, and the error that stopped it.
func (p *pump) readiness() (ready bool, nbytes int, hangup bool, errno Errno) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case len(p.buf) > 0:
		return true, len(p.buf), false, errSuccess
	case p.err == io.EOF:
		return true, 0, true, errSuccess
	case p.err != nil:
		return true, 0, true, sockErrno(p.err)
	case p.closed:
		return true, 0, true, errBadf
	}
	return false, 0, false, errSuccess
}

// sockErrno maps a connection error; a failed TLS handshake or a reset
// peer is ECONNRESET to the guest.
func sockErrno(err error) Errno {
	switch e := errnoOf(err); e {
	case errIo, errConnaborted:
		return errConnreset
	default:
		return e
	}
}

// writeMax is how much a connection buffers for its writer goroutine.
const writeMax = 256 << 10

// lingerTime bounds how long a closed connection keeps sending what the
// guest wrote before closing it.
const lingerTime = 10 * time.Second

// conn is a connected socket: accepted from a listener or dialled at
// start. Reads come from its pump; writes go to a buffer that a writer
// goroutine sends, so that a peer that does not read cannot block the
// guest's thread (a non-blocking write gets EAGAIN when the buffer is
// full, and FD_WRITE is ready again when it drains).
type conn struct {
	*pump
	s   *System
	c   net.Conn
	raw *rawSock // plain TCP: direct writes (nil for TLS)
	// direct: no pump; the guest's thread reads the socket (direct_linux.go).
	direct bool
	once   sync.Once

	wmu      sync.Mutex
	wcond    *sync.Cond
	wbuf     []byte
	inflight int // bytes the writer (or a direct TLS write) is sending now
	// TLS: the ciphertext the socket did not take at once (see nbConn),
	// and how much of it the writer is sending now.
	spill         []byte
	spillInflight int
	tlsDirect     *nbConn     // the socket under a TLS connection
	hsDone        atomic.Bool // the TLS handshake succeeded
	tlsBuf        []byte      // fillTLS's decryption buffer
	tlsDrained    bool        // fillTLS found the socket empty (the guest's thread alone uses it)
	werr          error       // why writing stopped
	shutWr        bool        // the guest shut down writing
	shutDone      bool        // the writer has sent the FIN
	closing       bool        // the guest closed: flush, then close
	lingers       bool        // counted in System.lingering until the writer ends
	aborted       bool        // close at once, dropping what is buffered
}

func (s *System) newConn(c net.Conn, handshake func() error) *conn {
	cn := &conn{s: s, c: c, pump: newPump(s, c, handshake)}
	if tc, ok := c.(*net.TCPConn); ok {
		if directReads && handshake == nil {
			if sc, err := unpoll(tc); err == nil {
				cn.c, cn.pump.r = sc, sc
				cn.raw = newRawSock(sc.raw)
			}
		}
		if cn.raw == nil {
			if rc, err := tc.SyscallConn(); err == nil {
				cn.raw = newRawSock(rc)
			}
		}
	}
	cn.direct = directReads && cn.raw != nil && handshake == nil
	if tc, ok := c.(*tls.Conn); ok {
		if nb, ok := tc.NetConn().(*nbConn); ok {
			nb.c, cn.tlsDirect = cn, nb
			if handshake == nil {
				cn.hsDone.Store(true)
			} else {
				hs := handshake
				handshake = func() error {
					err := hs()
					if err == nil {
						nb.nonblockRead.Store(directReads)
					}
					cn.hsDone.Store(err == nil)
					return err
				}
				cn.pump.handshake = handshake
				cn.pump.stopAfterHandshake = directReads
			}
		}
	}
	cn.wcond = sync.NewCond(&cn.wmu)
	s.track(cn)
	if !cn.direct {
		cn.start(true)
	}
	s.pumps.Add(1)
	go func() {
		defer s.pumps.Done()
		cn.writer()
		cn.wmu.Lock()
		if cn.lingers {
			cn.lingers = false
			s.lingering.Add(-1)
		}
		cn.wmu.Unlock()
	}()
	return cn
}

// read reads what the peer sent, from the socket or the pump.
func (c *conn) read(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	switch {
	case c.direct:
		return c.readDirect(ctx, iovs, nonblock, peek)
	case c.tlsDirect != nil && directReads:
		return c.readTLS(ctx, iovs, nonblock, peek)
	}
	return c.pump.read(ctx, iovs, nonblock, peek)
}

// readiness reports whether a read would not block (see pump.readiness).
func (c *conn) readiness() (bool, int, bool, Errno) {
	switch {
	case c.direct:
		return c.directReadiness()
	case c.tlsReading():
		c.fillTLS()
	}
	return c.pump.readiness()
}

// tlsReading reports whether the guest's thread reads this TLS
// connection (its handshake is done; direct_linux.go).
func (c *conn) tlsReading() bool {
	return directReads && c.tlsDirect != nil && c.hsDone.Load()
}

func (c *conn) writer() {
	type closeWriter interface{ CloseWrite() error }
	for {
		c.wmu.Lock()
		for len(c.wbuf) == 0 && len(c.spill) == 0 && !c.closing && !c.aborted && (!c.shutWr || c.shutDone) {
			c.wcond.Wait()
		}
		switch {
		case c.aborted:
			c.wmu.Unlock()
			return
		case len(c.spill) > 0:
			// Ciphertext first: it was written before anything queued.
			c.flushSpill()
			c.wmu.Unlock()
			c.s.wake()
			continue
		case len(c.wbuf) == 0 && c.shutWr && !c.shutDone:
			c.shutDone = true
			c.wmu.Unlock()
			if cw, ok := c.c.(closeWriter); ok {
				cw.CloseWrite()
			}
			continue
		case len(c.wbuf) == 0 && c.closing:
			c.wmu.Unlock()
			c.c.Close()
			return
		}
		chunk := c.wbuf
		c.wbuf = nil
		c.inflight = len(chunk)
		c.wmu.Unlock()
		_, err := c.c.Write(chunk)
		c.wmu.Lock()
		c.inflight = 0
		if err != nil {
			if c.werr == nil {
				c.werr = err
			}
			c.wbuf = nil
		}
		c.wcond.Broadcast()
		c.wmu.Unlock()
		c.s.wake()
	}
}

// write buffers b. A blocking write waits until all of b is buffered; a
// non-blocking one buffers what fits, or returns EAGAIN.
func (c *conn) write(ctx context.Context, b []byte, nonblock bool) (int, Errno) {
	total := 0
	for {
		ch := c.s.waiter()
		c.wmu.Lock()
		switch {
		case c.werr != nil:
			err := c.werr
			c.wmu.Unlock()
			if total > 0 {
				return total, errSuccess
			}
			if errors.Is(err, net.ErrClosed) {
				return 0, errPipe
			}
			return 0, sockErrno(err)
		case c.shutWr || c.closing || c.aborted:
			c.wmu.Unlock()
			return 0, errPipe
		}
		if total == 0 && len(c.wbuf) == 0 && c.inflight == 0 && len(b) > 0 {
			// Nothing queued: write from the guest's thread, without waking
			// the writer goroutine.
			switch {
			case c.raw != nil:
				// What the socket does not take now is queued below.
				n, err := c.raw.write(b)
				if err != nil {
					c.werr = err
					c.wmu.Unlock()
					continue
				}
				total = n
			case c.tlsDirect != nil && c.hsDone.Load() && len(b) <= writeMax-len(c.spill)-c.spillInflight:
				// Encrypt here; the socket under TLS never blocks (what it
				// does not take is spilled to the writer).
				c.inflight = len(b)
				c.wmu.Unlock()
				n, err := c.c.Write(b)
				c.wmu.Lock()
				c.inflight = 0
				if err != nil {
					c.werr = err
					c.wmu.Unlock()
					continue
				}
				total = n
			}
		}
		if space := writeMax - len(c.wbuf) - c.inflight - len(c.spill) - c.spillInflight; space > 0 && total < len(b) {
			n := min(space, len(b)-total)
			c.wbuf = append(c.wbuf, b[total:total+n]...)
			total += n
			c.wcond.Signal()
		}
		c.wmu.Unlock()
		switch {
		case total == len(b):
			return total, errSuccess
		case nonblock && total > 0:
			return total, errSuccess
		case nonblock:
			return 0, errAgain
		}
		c.s.wait(ctx, ch, nil)
	}
}

// writev writes iovs as one stream, at most writeMax bytes of them
// joined at a time (see gather). A blocking call writes them all, unless
// writing fails after some were taken; a non-blocking one stops at the
// first chunk the connection did not take whole.
func (c *conn) writev(ctx context.Context, iovs [][]byte, nonblock bool) (int, Errno) {
	total := 0
	for {
		chunk, rest := gather(iovs, writeMax)
		n, errno := c.write(ctx, chunk, nonblock)
		total += n
		switch {
		case errno != errSuccess && total > 0:
			return total, errSuccess
		case errno != errSuccess:
			return 0, errno
		case n < len(chunk) || len(rest) == 0:
			return total, errSuccess
		}
		iovs = rest
	}
}

// flushSpill sends the spilled ciphertext, blocking; c.wmu is held and
// released meanwhile.
func (c *conn) flushSpill() {
	chunk := c.spill
	c.spill = nil
	c.spillInflight = len(chunk)
	c.wmu.Unlock()
	_, err := c.tlsDirect.Conn.Write(chunk)
	c.wmu.Lock()
	c.spillInflight = 0
	if err != nil && c.werr == nil {
		c.werr = err
	}
	c.wcond.Broadcast()
}

// nbConn is the socket under a TLS connection, so that the guest's thread
// can encrypt and send without blocking: Write sends what the socket takes
// at once and spills the rest to the connection's writer goroutine, which
// sends it before anything else (c.wmu orders the two).
type nbConn struct {
	net.Conn // a sockConn out of the runtime's poller where unpoll works, else the *net.TCPConn
	raw      *rawSock
	c        *conn
	// nonblockRead: Read does not wait (after the handshake, on Linux;
	// crypto/tls keeps a partial record and resumes after a temporary
	// error).
	nonblockRead atomic.Bool
	iov          [1][]byte // Read's buffer, for rawSock.recv without an allocation
}

func newNBConn(tc *net.TCPConn) (*nbConn, error) {
	if directReads {
		if sc, err := unpoll(tc); err == nil {
			return &nbConn{Conn: sc, raw: newRawSock(sc.raw)}, nil
		}
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &nbConn{Conn: tc, raw: newRawSock(raw)}, nil
}

func (nb *nbConn) Write(p []byte) (int, error) {
	c := nb.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	rest := p
	if len(c.spill) == 0 && c.spillInflight == 0 {
		n, err := nb.raw.write(rest)
		if err != nil {
			return n, err
		}
		rest = rest[n:]
	}
	if len(rest) > 0 {
		c.spill = append(c.spill, rest...)
		c.wcond.Broadcast()
	}
	return len(p), nil
}

// writable reports whether a write would not block, and the error that
// stopped writing, if any.
func (c *conn) writable() (bool, Errno) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case c.werr != nil:
		return true, sockErrno(c.werr)
	case c.shutWr || c.closing || c.aborted:
		return true, errPipe
	}
	return writeMax-len(c.wbuf)-c.inflight-len(c.spill)-c.spillInflight > 0, errSuccess
}

// Close implements io.Closer for System.Interrupt: it drops what is
// buffered and closes at once.
func (c *conn) Close() error {
	c.wmu.Lock()
	c.aborted = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	c.close()
	return c.c.Close()
}

// close stops reading and lets the writer send what the guest wrote (for
// at most lingerTime), then close the socket.
func (c *conn) close() error {
	c.once.Do(func() {
		c.s.untrack(c)
		c.pump.close()
		c.c.SetWriteDeadline(time.Now().Add(lingerTime))
		c.wmu.Lock()
		c.closing = true
		aborted := c.aborted
		if !aborted && len(c.wbuf)+c.inflight+len(c.spill)+c.spillInflight > 0 {
			// Until the writer has sent what is buffered, the socket, its
			// goroutines and buffers stay: they count as an open file.
			c.lingers = true
			c.s.lingering.Add(1)
		}
		c.wcond.Broadcast()
		c.wmu.Unlock()
		if aborted {
			c.c.Close()
		}
	})
	return nil
}

func (c *conn) shutdown(how uint32) Errno {
	if how&sdflagRd != 0 {
		c.mu.Lock()
		c.buf = c.buf[:0]
		if c.err == nil {
			c.err = io.EOF
		}
		c.cond.Broadcast()
		c.mu.Unlock()
		c.s.wake()
	}
	if how&sdflagWr != 0 {
		c.wmu.Lock()
		c.shutWr = true
		c.wcond.Broadcast()
		c.wmu.Unlock()
	}
	return errSuccess
}

// listener is a bound socket whose accept loop keeps at most one accepted
// connection waiting for the guest; the kernel backlog holds the rest.
type listener struct {
	s      *System
	ln     net.Listener
	tlsCfg *tls.Config

	mu      sync.Mutex
	cond    *sync.Cond
	pending net.Conn
	err     error
	closed  bool
	once    sync.Once
}

func (s *System) listen(f config.File) (*listener, error) {
	addr := net.JoinHostPort(f.Addr, strconv.Itoa(int(f.Port)))
	var tlsCfg *tls.Config
	switch f.Prot {
	case config.ProtTCP, "":
	case config.ProtTLS:
		if s.opts.Certificate == nil {
			return nil, errorf("a tls listener needs the keep's certificate")
		}
		tlsCfg = &tls.Config{
			Certificates: []tls.Certificate{*s.opts.Certificate},
			MinVersion:   tls.VersionTLS13,
		}
	default:
		return nil, errorf("unknown protocol %q", f.Prot)
	}
	var ln net.Listener
	var err error
	if s.opts.Listen != nil {
		ln, err = s.opts.Listen(f)
	} else {
		ln, err = net.Listen("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	l := &listener{s: s, ln: ln, tlsCfg: tlsCfg}
	l.cond = sync.NewCond(&l.mu)
	s.track(l)
	if s.opts.OnListen != nil {
		s.opts.OnListen(f.Name, ln.Addr())
	}
	s.pumps.Add(1)
	go func() {
		defer s.pumps.Done()
		l.run()
	}()
	return l, nil
}

func (l *listener) run() {
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			closed := l.closed
			l.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) || errors.Is(err, os.ErrDeadlineExceeded) {
				// Out of host descriptors or a transient error: back off as
				// net/http does, then try again.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-l.s.closed:
					return
				}
			}
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			l.s.wake()
			return
		}
		backoff = 0
		l.mu.Lock()
		for l.pending != nil && !l.closed {
			l.cond.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.pending = c
		l.mu.Unlock()
		l.s.wake()
	}
}

// Close implements io.Closer for System.Interrupt.
func (l *listener) Close() error { return l.close() }

func (l *listener) close() error {
	var err error
	l.once.Do(func() {
		l.s.untrack(l)
		l.mu.Lock()
		l.closed = true
		if l.pending != nil {
			l.pending.Close()
			l.pending = nil
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		err = l.ln.Close()
	})
	return err
}

func (l *listener) take() (net.Conn, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.pending
	l.pending = nil
	if c != nil {
		l.cond.Signal()
		return c, nil
	}
	return nil, l.err
}

func (l *listener) readiness() (bool, Errno) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.pending != nil:
		return true, errSuccess
	case l.err != nil:
		return true, errnoOf(l.err)
	case l.closed:
		return true, errBadf
	}
	return false, errSuccess
}

// connect dials a connect entry and, for TLS, completes the handshake,
// so that a wrong host or certificate is reported before the guest runs.
func (s *System) connect(ctx context.Context, f config.File) (*conn, error) {
	addr := net.JoinHostPort(f.Host, strconv.Itoa(int(f.Port)))
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var tlsCfg *tls.Config
	switch f.Prot {
	case config.ProtTCP, "":
	case config.ProtTLS:
		tlsCfg = &tls.Config{ServerName: f.Host, MinVersion: tls.VersionTLS12}
		if s.opts.Certificate != nil {
			tlsCfg.Certificates = []tls.Certificate{*s.opts.Certificate}
		}
		if f.CAFile != "" {
			path := f.CAFile
			if !filepath.IsAbs(path) && s.opts.ConfigDir != "" {
				path = filepath.Join(s.opts.ConfigDir, path)
			}
			pem, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("ca file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("ca file %s: no PEM certificate in it", path)
			}
			tlsCfg.RootCAs = pool
		}
	default:
		return nil, errorf("unknown protocol %q", f.Prot)
	}
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var c net.Conn = raw
	if tlsCfg != nil {
		tc := tls.Client(raw, tlsCfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
		}
		c = tc
	}
	return s.newConn(c, nil), nil
}

// getConn returns descriptor fd and its connection if it is a connected
// socket: ENOTCONN for a listener, ENOTSOCK for anything else.
func (s *System) getConn(fd uint32) (*fdesc, *conn, Errno) {
	d, errno := s.get(fd)
	if errno != errSuccess {
		return nil, nil, errno
	}
	switch k := d.f.(type) {
	case *connKind:
		return d, k.c, errSuccess
	case *listenerKind:
		return nil, nil, errNotconn
	}
	return nil, nil, errNotsock
}

func sockAccept(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	var ln *listener
	switch k := d.f.(type) {
	case *listenerKind:
		ln = k.ln
	case *connKind:
		return errInval
	default:
		return errNotsock
	}
	if errno := d.need(rightSockAccept); errno != errSuccess {
		return errno
	}
	flags := uint16(p[1])
	if flags&^fdflagNonblock != 0 {
		return errInval
	}
	for {
		if s.full() {
			return errMfile
		}
		ch := s.waiter()
		raw, err := ln.take()
		if raw != nil {
			var handshake func() error
			c := raw
			if ln.tlsCfg != nil {
				under := raw
				if tcp, ok := raw.(*net.TCPConn); ok {
					if nb, err := newNBConn(tcp); err == nil {
						under = nb
					}
				}
				tc := tls.Server(under, ln.tlsCfg)
				// Closing the connection (fd_close, System.Close or
				// Interrupt) ends a handshake in progress.
				handshake = tc.Handshake
				c = tc
			}
			cn := s.newConn(c, handshake)
			nd := &fdesc{f: &connKind{noKind: noKind{filetypeSocketStream}, c: cn}, base: rightsSock, flags: flags}
			fd, errno := s.alloc(nd)
			if errno != errSuccess {
				cn.close()
				return errno
			}
			m.putU32(uint32(p[2]), fd)
			return errSuccess
		}
		if err != nil {
			return errnoOf(err)
		}
		if d.nonblock() {
			return errAgain
		}
		s.wait(ctx, ch, nil)
	}
}

func sockRecv(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, c, errno := s.getConn(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdRead); errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	riflags := uint16(p[3])
	if riflags&^(riflagRecvPeek|riflagRecvWaitall) != 0 {
		return errInval
	}
	peek := riflags&riflagRecvPeek != 0
	n, errno := c.read(ctx, iovs, d.nonblock(), peek)
	if errno != errSuccess {
		return errno
	}
	if riflags&riflagRecvWaitall != 0 && !peek && !d.nonblock() {
		want := 0
		for _, b := range iovs {
			want += len(b)
		}
		for n < want {
			k, errno := c.read(ctx, skip(iovs, n), false, false)
			if errno != errSuccess || k == 0 {
				break
			}
			n += k
		}
	}
	m.putU32(uint32(p[4]), uint32(n))
	m.putU16(uint32(p[5]), 0)
	return errSuccess
}

// skip drops the first n bytes of iovs.
func skip(iovs [][]byte, n int) [][]byte {
	for len(iovs) > 0 && n >= len(iovs[0]) {
		n -= len(iovs[0])
		iovs = iovs[1:]
	}
	if len(iovs) > 0 {
		iovs = append([][]byte{iovs[0][n:]}, iovs[1:]...)
	}
	return iovs
}

func sockSend(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, c, errno := s.getConn(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdWrite); errno != errSuccess {
		return errno
	}
	if uint16(p[3]) != 0 {
		return errInval
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	n, errno := c.writev(ctx, iovs, d.nonblock())
	if errno != errSuccess {
		return errno
	}
	m.putU32(uint32(p[4]), uint32(n))
	return errSuccess
}

func sockShutdown(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	how := uint32(p[1])
	if how == 0 || how&^(sdflagRd|sdflagWr) != 0 {
		return errInval
	}
	switch k := d.f.(type) {
	case *connKind:
		if errno := d.need(rightSockShutdown); errno != errSuccess {
			return errno
		}
		return k.c.shutdown(how)
	case *listenerKind:
		return errNotconn
	}
	return errNotsock
}
