package connlimit

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestClientConnsLimited: one address holds at most max connections open
// at once; one more is closed at once, and a slot comes back when one of
// its connections closes. Against a real server on loopback, with the
// connections kept alive as an attacker would.
func TestPerClientLimit(t *testing.T) {
	const max = 3
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var logged []string
	logf := func(f string, a ...any) { mu.Lock(); logged = append(logged, fmt.Sprintf(f, a...)); mu.Unlock() }
	limited := Listen(ln, max, logf)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(limited)
	defer srv.Close()

	// get sends a request on c and says whether the answer came.
	get := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(2 * time.Minute)) // a hang catcher
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b) == "ok"
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for i := range max {
		c := dial()
		if !get(c) {
			t.Fatalf("connection %d within the limit got no answer", i+1)
		}
		held = append(held, c)
	}
	if get(dial()) {
		t.Fatalf("connection %d past the limit of %d was served", max+1, max)
	}
	held[0].Close()
	// The slot comes back once the server has seen the close.
	deadline := time.Now().Add(2 * time.Minute)
	for !get(dial()) {
		if time.Now().After(deadline) {
			t.Fatal("no slot came back after a connection closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) == 0 || !strings.Contains(logged[0], "past 3 open from one address (the last from 127.0.0.1/32)") {
		t.Errorf("log %q", logged)
	}
}

// TestClientConnsForgotten: the counts of addresses whose connections all
// closed are dropped, so the limiter's memory follows the connections open.
func TestClosedClientsForgotten(t *testing.T) {
	l := Listen(nil, 2, nil).(*connLimiter)
	for i := range 1000 {
		key, _ := Key(fmt.Sprintf("10.0.%d.%d:1", i/256, i%256))
		l.open[key]++
		(&limitedConn{Conn: nopConn{}, l: l, key: key}).Close()
	}
	if len(l.open) != 0 {
		t.Errorf("%d addresses still counted after all their connections closed", len(l.open))
	}
}

type nopConn struct{ net.Conn }

func (nopConn) Close() error { return nil }
