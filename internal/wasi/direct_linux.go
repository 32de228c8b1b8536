package wasi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// On Linux a plain TCP connection has no pump goroutine: the guest's
// thread reads the socket itself with non-blocking recvmsg, and
// poll_oneoff and blocking reads wait in one ppoll(2) on the sockets and
// an eventfd that wake kicks (pumps of TLS connections and stdin, the
// listeners, Interrupt). A socket becoming readable wakes the guest's
// thread directly, with no goroutine or channel between them.
const directReads = true

// kicker is the eventfd that ends a ppoll in progress.
type kicker struct{ fd int }

func newKicker() (*kicker, error) {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	return &kicker{fd: fd}, nil
}

func (k *kicker) kick() {
	var one = [8]byte{1}
	unix.Write(k.fd, one[:])
}

func (k *kicker) drain() {
	var b [8]byte
	unix.Read(k.fd, b[:])
}

func (k *kicker) close() { unix.Close(k.fd) }

// pollFd is one socket a wait watches; revents is set by pollWait.
type pollFd = unix.PollFd

const (
	pollIn = unix.POLLIN | unix.POLLRDHUP
)

// pollWait sleeps until one of fds has an event, the wake channel ch is
// closed, the deadline (if not zero) passes, or the run is interrupted (it
// panics then, as wait does). fds[i].Revents tell which sockets are ready.
func (s *System) pollWait(ctx context.Context, ch <-chan struct{}, fds []pollFd, deadline time.Time) {
	k, err := s.kicker()
	if k == nil || err != nil {
		// No eventfd (out of descriptors): poll the sockets briefly
		// between looks at the other sources.
		if deadline.IsZero() || time.Until(deadline) > time.Millisecond {
			deadline = time.Now().Add(time.Millisecond)
		}
	}
	all := append(s.pfds[:0], fds...)
	if k != nil {
		all = append(all, pollFd{Fd: int32(k.fd), Events: unix.POLLIN})
	}
	s.pfds = all
	var ts *unix.Timespec
	if !deadline.IsZero() {
		t := unix.NsecToTimespec(max(int64(time.Until(deadline)), 0))
		ts = &t
	}
	s.sleepers.Add(1)
	select {
	case <-ch: // woken between the caller's look and now
	default:
		var stop func() bool
		if ctx.Done() != nil && k != nil {
			stop = context.AfterFunc(ctx, k.kick)
		}
		for {
			_, err := unix.Ppoll(all, ts, nil)
			if err != unix.EINTR {
				break
			}
			if ts != nil {
				t := unix.NsecToTimespec(max(int64(time.Until(deadline)), 0))
				ts = &t
			}
		}
		if stop != nil {
			stop()
		}
	}
	s.sleepers.Add(-1)
	if k != nil && all[len(all)-1].Revents != 0 {
		k.drain()
	}
	copy(fds, all)
	if ctx.Err() != nil {
		panic(fmt.Errorf("%w: %w", ErrInterrupted, context.Cause(ctx)))
	}
	select {
	case <-s.closed:
		panic(fmt.Errorf("%w: the keep is shutting down", ErrInterrupted))
	default:
	}
}

// kicker returns the system's eventfd, made on first use.
func (s *System) kicker() (*kicker, error) {
	if k := s.kick.Load(); k != nil {
		return k, nil
	}
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if k := s.kick.Load(); k != nil || s.kickErr != nil {
		return k, s.kickErr
	}
	k, err := newKicker()
	if err != nil {
		s.kickErr = err
		return nil, err
	}
	s.kick.Store(k)
	return k, nil
}

// kickSleepers ends a ppoll in progress; wake calls it.
func (s *System) kickSleepers() {
	if s.sleepers.Load() > 0 {
		if k := s.kick.Load(); k != nil {
			k.kick()
		}
	}
}

// closeKicker closes the eventfd once nothing can wait on it.
func (s *System) closeKicker() {
	if k := s.kick.Load(); k != nil {
		k.close()
	}
}

// fd returns the socket's descriptor for ppoll; -1 once it is closed.
func (c *conn) fd() int32 {
	raw := c.raw
	if raw == nil && c.tlsDirect != nil {
		raw = c.tlsDirect.raw
	}
	if raw == nil {
		return -1
	}
	return raw.fd()
}

// pollable reports whether poll_oneoff must look at the socket to know
// whether a read would block: a direct socket not shut down for reading,
// or a TLS connection read by the guest's thread with nothing decrypted
// (it decrypts what has arrived first).
func (c *conn) pollable() bool {
	switch {
	case c.direct:
		done, _ := c.readShut()
		return !done
	case c.tlsReading():
		if !c.tlsDrained {
			c.fillTLS()
		}
		ok, _, _, _ := c.pump.readiness()
		return !ok
	}
	return false
}

// wouldBlock is nbConn.Read's error when nothing has arrived: temporary,
// so crypto/tls keeps what it has of a record and the connection usable.
type wouldBlock struct{}

func (wouldBlock) Error() string   { return "read would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// Read reads the socket under a TLS connection: blocking during the
// handshake (in the pump goroutine), never after it.
func (nb *nbConn) Read(p []byte) (int, error) {
	if !nb.nonblockRead.Load() {
		return nb.Conn.Read(p)
	}
	nb.iov[0] = p
	n, err := nb.raw.recv(nb.iov[:], 0)
	nb.iov[0] = nil
	switch {
	case err == unix.EAGAIN:
		return 0, wouldBlock{}
	case err != nil:
		return 0, err
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// fillTLS decrypts what has arrived into the connection's buffer, until
// the socket has nothing more (so that a record crypto/tls holds is never
// hidden from poll_oneoff), the buffer is full, or the stream ends.
//
// When it stops because the socket has nothing more, it sets tlsDrained:
// then crypto/tls holds at most part of a record, whose rest must come
// through the socket, so the socket's own readiness is the connection's
// and poll_oneoff need not read it again (one recv per subscribed
// connection and look, mostly EAGAIN, was a third of a busy TLS keep's
// CPU). Anything else (the handshake's leftovers, a full buffer, an
// error) leaves it false, and the next look decrypts first.
func (c *conn) fillTLS() {
	c.tlsDrained = false
	for {
		c.mu.Lock()
		stop := c.err != nil || c.closed || len(c.buf) >= pumpMax
		c.mu.Unlock()
		if stop {
			return
		}
		if c.tlsBuf == nil {
			c.tlsBuf = make([]byte, 16<<10)
		}
		n, err := c.c.Read(c.tlsBuf)
		_, temporary := err.(wouldBlock)
		if !temporary {
			var ne interface{ Temporary() bool }
			temporary = errors.As(err, &ne) && ne.Temporary() && !errors.Is(err, net.ErrClosed)
		}
		c.mu.Lock()
		c.buf = append(c.buf, c.tlsBuf[:n]...)
		if err != nil && !temporary && c.err == nil {
			c.err = err
		}
		c.mu.Unlock()
		if err != nil {
			c.tlsDrained = temporary && n == 0
			return
		}
	}
}

// readTLS reads a TLS connection: through the pump until the handshake
// is done, then by decrypting on the guest's thread.
func (c *conn) readTLS(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	for {
		ch := c.s.waiter()
		reading := c.tlsReading()
		if reading {
			c.fillTLS()
		}
		n, errno := c.pump.read(ctx, iovs, true, peek)
		if errno != errAgain || nonblock {
			return n, errno
		}
		if !reading {
			c.s.wait(ctx, ch, nil) // the handshake wakes it
			continue
		}
		fd := c.fd()
		if fd < 0 {
			return 0, errBadf
		}
		c.s.pollWait(ctx, ch, []pollFd{{Fd: fd, Events: pollIn}}, time.Time{})
	}
}

// recvNow makes one non-blocking recvmsg into iovs. again is true when
// there is nothing to read yet.
func (c *conn) recvNow(iovs [][]byte, peek bool) (n int, errno Errno, again bool) {
	flags := 0
	if peek {
		flags = unix.MSG_PEEK
	}

	n, err := c.raw.recv(iovs, flags)
	switch {
	case err == unix.EAGAIN:
		return 0, errSuccess, true
	case err != nil:
		return 0, sockErrno(err), false
	}
	return n, errSuccess, false
}

// readDirect reads the socket from the guest's thread.
func (c *conn) readDirect(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	size := 0
	for _, b := range iovs {
		size += len(b)
	}
	for {
		ch := c.s.waiter()
		if done, errno := c.readShut(); done {
			return 0, errno
		}
		if size == 0 {
			return 0, errSuccess
		}
		n, errno, again := c.recvNow(iovs, peek)
		if !again {
			return n, errno
		}
		if nonblock {
			return 0, errAgain
		}
		fd := c.fd()
		if fd < 0 {
			return 0, errBadf
		}
		c.s.pollWait(ctx, ch, []pollFd{{Fd: fd, Events: pollIn}}, time.Time{})
	}
}

// readShut reports whether reading ended before the socket: the guest
// shut reading down (EOF) or closed the descriptor (EBADF).
func (c *conn) readShut() (bool, Errno) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return true, errBadf
	case c.err == io.EOF:
		return true, errSuccess
	}
	return false, errSuccess
}

// readEvent turns ppoll's revents for a direct socket into poll_oneoff's
// readiness: the bytes waiting, and hangup at the end of the stream.
func (c *conn) readEvent(fd int32, revents int16) (ok bool, nbytes int, hangup bool, errno Errno) {
	if c.tlsDirect != nil {
		if revents != 0 {
			c.fillTLS()
		}
		return c.pump.readiness()
	}
	if done, errno := c.readShut(); done {
		return true, 0, true, errno
	}
	switch {
	case revents&unix.POLLNVAL != 0:
		return true, 0, true, errBadf
	case revents&unix.POLLERR != 0:
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soErr != 0 {
			return true, 0, true, sockErrno(unix.Errno(soErr))
		}
		return true, 0, true, errConnreset
	case revents&(unix.POLLIN|unix.POLLRDHUP|unix.POLLHUP) == 0:
		return false, 0, false, errSuccess
	}
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil || n == 0 {
		// Readable with nothing queued: the peer closed (recv returns 0).
		return true, 0, err == nil, errSuccess
	}
	return true, n, false, errSuccess
}

// pollNow fills fds' revents without waiting.
func pollNow(fds []pollFd) {
	for {
		if _, err := unix.Poll(fds, 0); err != unix.EINTR {
			return
		}
	}
}

// directReadiness is readiness for a direct socket, looked at alone.
func (c *conn) directReadiness() (bool, int, bool, Errno) {
	if done, errno := c.readShut(); done {
		return true, 0, true, errno
	}
	fd := c.fd()
	if fd < 0 {
		return true, 0, true, errBadf
	}
	fds := []pollFd{{Fd: fd, Events: pollIn}}
	pollNow(fds)
	return c.readEvent(fd, fds[0].Revents)
}

// sockConn is a plain TCP connection taken out of the Go runtime's poller
// (unpoll): the guest's thread reads and writes it with non-blocking calls
// and waits in its own ppoll, so the runtime's poller thread is not woken
// by every segment that arrives or is acknowledged (edges that no
// goroutine waits for, each a wake-up of a second thread). The writer
// goroutine's blocking writes wait for POLLOUT in ppoll, in slices of
// sockWaitSlice so that a close is noticed.
type sockConn struct {
	raw          *fdRaw
	laddr, raddr net.Addr
	deadline     atomic.Int64 // write deadline, UnixNano; 0: none
}

var _ net.Conn = (*sockConn)(nil)

// fdRaw is a descriptor the runtime's poller does not know, as a
// syscall.RawConn: every call runs under a read lock and Close takes the
// write lock, so a descriptor is never closed (and its number reused)
// during a call on it.
type fdRaw struct {
	mu     sync.RWMutex
	fd     int
	closed bool
}

var _ syscall.RawConn = (*fdRaw)(nil)

func (r *fdRaw) Control(f func(fd uintptr)) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return net.ErrClosed
	}
	f(uintptr(r.fd))
	return nil
}

func (r *fdRaw) Read(f func(fd uintptr) bool) error {
	return r.Control(func(fd uintptr) { f(fd) })
}

func (r *fdRaw) Write(f func(fd uintptr) bool) error {
	return r.Control(func(fd uintptr) { f(fd) })
}

func (r *fdRaw) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	r.closed = true
	return unix.Close(r.fd)
}

// sockWaitSlice bounds one wait of a blocking read or write.
const sockWaitSlice = 50 * time.Millisecond

// unpoll moves tc out of the runtime's poller: a duplicate of its
// descriptor (never registered with the poller; os.NewFile would register
// it again) replaces it, and tc is closed, which deregisters it (the
// socket stays open through the duplicate, still non-blocking: the flag
// belongs to the socket, not the descriptor).
func unpoll(tc *net.TCPConn) (*sockConn, error) {
	laddr, raddr := tc.LocalAddr(), tc.RemoteAddr()
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil, err
	}
	nfd := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) { nfd, dupErr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil || dupErr != nil {
		return nil, errors.Join(err, dupErr)
	}
	tc.Close()
	return &sockConn{raw: &fdRaw{fd: nfd}, laddr: laddr, raddr: raddr}, nil
}

// wait waits until the socket has one of events (or a slice passed), the
// write deadline passes (os.ErrDeadlineExceeded) or the connection is
// closed.
func (sc *sockConn) wait(events int16) error {
	slice := sockWaitSlice
	if d := sc.deadline.Load(); d != 0 && events == unix.POLLOUT {
		left := time.Until(time.Unix(0, d))
		if left <= 0 {
			return os.ErrDeadlineExceeded
		}
		slice = min(slice, left)
	}
	var perr error
	err := sc.raw.Control(func(fd uintptr) {
		ts := unix.NsecToTimespec(int64(slice))
		_, perr = unix.Ppoll([]unix.PollFd{{Fd: int32(fd), Events: events}}, &ts, nil)
	})
	if err != nil {
		return err
	}
	if perr != nil && perr != unix.EINTR {
		return os.NewSyscallError("ppoll", perr)
	}
	return nil // ready, interrupted or the slice ended: the caller tries again
}

func (sc *sockConn) op(name string, write bool, b []byte) (int, error) {
	for {
		var n int
		var opErr error
		err := sc.raw.Control(func(fd uintptr) {
			for {
				if write {
					n, opErr = syscall.Write(int(fd), b)
				} else {
					n, opErr = syscall.Read(int(fd), b)
				}
				if opErr != syscall.EINTR {
					return
				}
			}
		})
		switch {
		case err != nil:
			return 0, &net.OpError{Op: name, Net: "tcp", Addr: sc.raddr, Err: err}
		case opErr == syscall.EAGAIN:
			events := int16(unix.POLLIN)
			if write {
				events = unix.POLLOUT
			}
			if err := sc.wait(events); err != nil {
				return 0, &net.OpError{Op: name, Net: "tcp", Addr: sc.raddr, Err: err}
			}
		case opErr != nil:
			return 0, &net.OpError{Op: name, Net: "tcp", Addr: sc.raddr, Err: os.NewSyscallError(name, opErr)}
		case !write && n == 0 && len(b) > 0:
			return 0, io.EOF
		default:
			return n, nil
		}
	}
}

// Read blocks until something arrives (the guest's thread reads through
// rawSock instead; this serves the net.Conn interface).
func (sc *sockConn) Read(b []byte) (int, error) { return sc.op("read", false, b) }

// Write sends all of b, waiting while the socket is full.
func (sc *sockConn) Write(b []byte) (int, error) {
	total := 0
	for total < len(b) {
		n, err := sc.op("write", true, b[total:])
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (sc *sockConn) Close() error { return sc.raw.close() }

// CloseWrite sends the FIN.
func (sc *sockConn) CloseWrite() error {
	var serr error
	if err := sc.raw.Control(func(fd uintptr) { serr = unix.Shutdown(int(fd), unix.SHUT_WR) }); err != nil {
		return err
	}
	return serr
}

func (sc *sockConn) LocalAddr() net.Addr  { return sc.laddr }
func (sc *sockConn) RemoteAddr() net.Addr { return sc.raddr }

func (sc *sockConn) SetDeadline(t time.Time) error { return sc.SetWriteDeadline(t) }

// SetReadDeadline is accepted and ignored: nothing reads with a deadline.
func (sc *sockConn) SetReadDeadline(time.Time) error { return nil }

func (sc *sockConn) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		sc.deadline.Store(0)
	} else {
		sc.deadline.Store(t.UnixNano())
	}
	return nil
}
