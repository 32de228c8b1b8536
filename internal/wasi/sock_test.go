package wasi

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
)

// sockGuest is a guest with a listener on descriptor 0 and the client
// side of one accepted connection, whose descriptor it returns.
func sockGuest(t *testing.T) (*guest, net.Conn, uint64) {
	t.Helper()
	addrc := make(chan string, 1)
	g := newGuest(t, Options{
		Files:    []config.File{{Kind: config.KindListen, Name: "l", Prot: config.ProtTCP, Addr: "127.0.0.1"}},
		OnListen: func(_ string, a net.Addr) { addrc <- a.String() },
	})
	client, err := net.Dial("tcp", <-addrc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(2 * time.Minute))
	return g, client, g.accept(0)
}

// accept waits for a connection on listener fd (non-blocking, as
// preopened sockets start) and takes it.
func (g *guest) accept(fd uint64) uint64 {
	g.t.Helper()
	if u, _, _, _ := g.pollRead(fd, time.Hour); u != 1 {
		g.t.Fatalf("poll on the listener: userdata %d", u)
	}
	fdp := g.alloc(4)
	if e := g.call("sock_accept", fd, 0, uint64(fdp)); e != errSuccess {
		g.t.Fatalf("sock_accept: errno %d", e)
	}
	return uint64(g.u32(fdp))
}

// send writes s on fd with fd_write and checks that peer receives it.
func (g *guest) send(fd uint64, s string, peer io.Reader) {
	g.t.Helper()
	iov, buf, n := g.alloc(8), g.alloc(len(s)), g.alloc(4)
	copy(g.mem[buf:], s)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], uint32(len(s)))
	if e := g.call("fd_write", fd, uint64(iov), 1, uint64(n)); e != errSuccess || g.u32(n) != uint32(len(s)) {
		g.t.Fatalf("fd_write: errno %d, n %d", e, g.u32(n))
	}
	got := make([]byte, len(s))
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != s {
		g.t.Fatalf("peer read %q, %v; want %q", got, err, s)
	}
}

// recv calls sock_recv with one buffer of size bytes.
func (g *guest) recv(fd uint64, size int, flags uint64) (string, Errno) {
	g.t.Helper()
	iov, buf, n, of := g.alloc(8), g.alloc(size), g.alloc(4), g.alloc(4)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], uint32(size))
	e := g.call("sock_recv", fd, uint64(iov), 1, flags, uint64(n), uint64(of))
	return string(g.mem[buf : buf+g.u32(n)]), e
}

// pollRead polls fd for reading with a clock of timeout and returns the
// events' userdata (1 for fd, 2 for the clock), errno, nbytes and flags.
func (g *guest) pollRead(fd uint64, timeout time.Duration) (userdata uint64, errno uint16, nbytes uint64, flags uint16) {
	g.t.Helper()
	in, out, nev := g.alloc(2*subscriptionSize), g.alloc(2*eventSize), g.alloc(4)
	sub := g.mem[in:]
	le.PutUint64(sub[0:], 1)
	sub[8] = eventtypeFdRead
	le.PutUint32(sub[16:], uint32(fd))
	sub = g.mem[in+subscriptionSize:]
	le.PutUint64(sub[0:], 2)
	sub[8] = eventtypeClock
	le.PutUint32(sub[16:], clockMonotonic)
	le.PutUint64(sub[24:], uint64(timeout))
	if e := g.call("poll_oneoff", uint64(in), uint64(out), 2, uint64(nev)); e != errSuccess {
		g.t.Fatalf("poll_oneoff: errno %d", e)
	}
	if g.u32(nev) != 1 {
		g.t.Fatalf("poll_oneoff: %d events, want 1", g.u32(nev))
	}
	ev := g.mem[out:]
	return le.Uint64(ev[0:]), le.Uint16(ev[8:]), le.Uint64(ev[16:]), le.Uint16(ev[24:])
}

func TestSocketReadPaths(t *testing.T) {
	g, client, fd := sockGuest(t)
	// Nothing sent: the clock fires, a non-blocking read gets EAGAIN.
	if u, _, _, _ := g.pollRead(fd, 10*time.Millisecond); u != 2 {
		t.Fatalf("poll with nothing sent: userdata %d, want the clock", u)
	}
	if e := g.call("fd_fdstat_set_flags", fd, fdflagNonblock); e != errSuccess {
		t.Fatal(e)
	}
	if _, e := g.recv(fd, 8, 0); e != errAgain {
		t.Fatalf("non-blocking read of nothing: errno %d, want EAGAIN", e)
	}
	g.call("fd_fdstat_set_flags", fd, 0)
	// A blocking read waits for the peer.
	go func() {
		time.Sleep(20 * time.Millisecond)
		io.WriteString(client, "hello")
	}()
	if s, e := g.recv(fd, 64, 0); e != errSuccess || s != "hello" {
		t.Fatalf("blocking read: %q, errno %d", s, e)
	}
	// poll reports the bytes waiting; a peek leaves them there.
	io.WriteString(client, "abc")
	deadline := time.Now().Add(2 * time.Minute)
	for {
		u, e, n, _ := g.pollRead(fd, time.Hour)
		if u != 1 || e != 0 {
			t.Fatalf("poll: userdata %d, errno %d", u, e)
		}
		if n == 3 || time.Now().After(deadline) {
			break
		}
	}
	if s, e := g.recv(fd, 64, riflagRecvPeek); e != errSuccess || s != "abc" {
		t.Fatalf("peek: %q, errno %d", s, e)
	}
	if s, e := g.recv(fd, 64, 0); e != errSuccess || s != "abc" {
		t.Fatalf("read after peek: %q, errno %d", s, e)
	}
	// What the guest writes reaches the peer.
	g.send(fd, "pong", client)
	// The peer closes: poll says hangup, the read returns 0.
	client.Close()
	g.expectEOF(fd, "after the peer closed")
}

// expectEOF checks that polling fd reports a hangup and reading it
// returns 0 bytes.
func (g *guest) expectEOF(fd uint64, when string) {
	g.t.Helper()
	if u, _, _, flags := g.pollRead(fd, time.Hour); u != 1 || flags&eventFdReadwriteHangup == 0 {
		g.t.Fatalf("poll %s: userdata %d, flags %d; want a hangup", when, u, flags)
	}
	if s, e := g.recv(fd, 64, 0); e != errSuccess || s != "" {
		g.t.Fatalf("read %s: %q, errno %d; want EOF", when, s, e)
	}
}

func TestSocketShutdownRead(t *testing.T) {
	for _, pending := range []string{"unread", ""} {
		g, client, fd := sockGuest(t)
		io.WriteString(client, pending)
		if e := g.call("sock_shutdown", fd, sdflagRd); e != errSuccess {
			t.Fatal(e)
		}
		g.expectEOF(fd, fmt.Sprintf("after shutdown with %q unread", pending))
	}
}

// TestSocketInterruptBlockedRead checks that Interrupt ends a read that
// waits for a peer that sends nothing.
func TestSocketInterruptBlockedRead(t *testing.T) {
	g, _, fd := sockGuest(t)
	time.AfterFunc(20*time.Millisecond, g.s.Interrupt)
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		g.recv(fd, 64, 0)
	}()
	select {
	case r := <-done:
		err, _ := r.(error)
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("blocked read ended with %v, want ErrInterrupted", r)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Interrupt did not end a blocked read")
	}
}
