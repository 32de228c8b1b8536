//go:build unix

package wasi

import (
	"net"
	"syscall"
	"testing"
)

// TestRawSock moves bytes both ways through rawSock (one buffer, several,
// a peek), checks EAGAIN on an empty socket and the descriptor look-up,
// and that none of it allocates: the guest's socket calls must not make
// garbage per call.
func TestRawSock(t *testing.T) {
	a, b := tcpPair(t)
	rawOf := func(c net.Conn) *rawSock {
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		return newRawSock(rc)
	}
	w, r := rawOf(a), rawOf(b)
	if w.fd() < 0 || r.fd() < 0 || w.fd() == r.fd() {
		t.Fatalf("descriptors %d and %d", w.fd(), r.fd())
	}
	one, two := make([]byte, 3), make([]byte, 2)
	iovs := [][]byte{one, two}
	single := [][]byte{one}
	if n, err := r.recv(single, 0); n != 0 || err != syscall.EAGAIN {
		t.Fatalf("empty socket: %d, %v; want EAGAIN", n, err)
	}
	// recvAll reads until n bytes came (loopback may split a write).
	recvAll := func(iovs [][]byte, flags, want int) {
		t.Helper()
		for got := 0; got < want; {
			n, err := r.recv(iovs, flags)
			if err == syscall.EAGAIN {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			got += n
			if flags != 0 {
				return
			}
		}
	}
	if n, err := w.write([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	recvAll(single, syscall.MSG_PEEK, 1)
	if one[0] != 'h' {
		t.Fatalf("peek %q", one)
	}
	recvAll(iovs, 0, 5)
	if string(one)+string(two) != "hello" {
		t.Fatalf("read %q %q", one, two)
	}
	msg := []byte("abc")
	allocs := testing.AllocsPerRun(200, func() {
		if n, err := w.write(msg); n != 3 || err != nil {
			t.Fatalf("write: %d, %v", n, err)
		}
		recvAll(single, 0, 3)
		w.fd()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per write, read and look-up; want 0", allocs)
	}
	b.Close()
	if n, err := w.write(msg); err == nil {
		// The peer's close may take a write to show.
		for i := 0; err == nil && i < 100; i++ {
			n, err = w.write(msg)
		}
		if err == nil {
			t.Fatalf("write to a closed peer: %d, no error", n)
		}
	}
	a.Close()
	if fd := w.fd(); fd != -1 {
		t.Errorf("descriptor %d after close, want -1", fd)
	}
}

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t *testing.T) (dialled, accepted net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialled, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialled.Close() })
	accepted, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	return dialled, accepted
}
