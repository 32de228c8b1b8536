package wasi

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestUnpoll checks a connection taken out of the runtime's poller:
// bytes both ways, a write that waits while the peer does not read (and
// ends at its deadline), the FIN of CloseWrite, and use after Close.
func TestUnpoll(t *testing.T) {
	peer, c := tcpPair(t)
	sc, err := unpoll(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	if sc.RemoteAddr().String() != peer.LocalAddr().String() {
		t.Errorf("remote address %v, want %v", sc.RemoteAddr(), peer.LocalAddr())
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("the original connection still writes: %v", err)
	}
	peer.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := peer.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if n, err := sc.Write([]byte("pong")); n != 4 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
	// The peer reads nothing: a big write fills the socket, waits, and
	// ends at the deadline with what it sent.
	sc.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	n, err := sc.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == 0 || n == 64<<20 {
		t.Fatalf("write to a stalled peer: %d, %v; want part of it and a deadline error", n, err)
	}
	sc.SetWriteDeadline(time.Time{})
	// Drain in the background while the rest goes out, then the FIN.
	done := make(chan error, 1)
	go func() {
		got, err := io.Copy(io.Discard, peer)
		if err == nil && got != int64(n)+3 {
			err = errors.New("the peer got a different count")
		}
		done <- err
	}()
	if _, err := sc.Write([]byte("end")); err != nil {
		t.Fatal(err)
	}
	if err := sc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("peer: %v", err)
	}
	if err := sc.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("write after close: %v, want net.ErrClosed", err)
	}
	if err := sc.raw.Control(func(uintptr) {}); !errors.Is(err, net.ErrClosed) {
		t.Errorf("control after close: %v", err)
	}
	if err := sc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("second close: %v", err)
	}
}
