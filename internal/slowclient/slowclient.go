// Package slowclient plays, in tests, the callers that try to hold a
// server's connections (and the goroutine and buffers behind each) open:
// one that trickles a body a byte at a time, one that goes quiet. Tests of
// castellan's servers (the host agent's API, the console) use it to check
// that the server hangs up.
package slowclient

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// HangCatcher is how long HungUp waits for the server to close: a bound
// that only catches a server that never does.
const HangCatcher = 2 * time.Minute

// Trickle writes one byte to c every interval until stop is closed or a
// write fails (the server hung up). Run it in its own goroutine.
func Trickle(c net.Conn, interval time.Duration, stop <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if _, err := c.Write([]byte{' '}); err != nil {
				return
			}
		}
	}
}

// HungUp reads r, which reads c, until the server closes the connection,
// and fails the test if it still holds it after HangCatcher.
func HungUp(t testing.TB, c net.Conn, r io.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(HangCatcher))
	_, err := io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server still holds the connection after %v", HangCatcher)
	}
}

// GoQuiet sends request (raw HTTP/1.1) on c, checks that the answer has
// status and keeps the connection alive, then sends nothing more and
// waits, as HungUp does, for the server to close the connection.
func GoQuiet(t testing.TB, c net.Conn, request string, status int) {
	t.Helper()
	c.SetDeadline(time.Now().Add(HangCatcher))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status || resp.Close {
		t.Fatalf("got %s (close %v), want %d on a kept-alive connection", resp.Status, resp.Close, status)
	}
	HungUp(t, c, br)
}

// TrickleBody sends head (a request's line and headers, announcing a
// body, and the body's first bytes) on c, then one byte every interval,
// and waits, as HungUp does, for the server to close the connection.
func TrickleBody(t testing.TB, c net.Conn, head string, interval time.Duration) {
	t.Helper()
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go Trickle(c, interval, stop)
	HungUp(t, c, bufio.NewReader(c))
}
