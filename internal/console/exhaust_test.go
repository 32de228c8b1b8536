package console_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/console"
	"github.com/castellan-dev/castellan/internal/slowclient"
)

// Anonymous visitors must not hold the console's connections (and the
// goroutine and buffers behind each) for as long as they like: these tests
// serve the console with HTTPServer, as `castellan console` does, with short
// timeouts, and expect it to hang up.

const shortTimeout = 300 * time.Millisecond

// serveShort serves a console (keeps as child processes: no agent) with
// short read and idle timeouts on loopback and returns its address.
func serveShort(t *testing.T) string {
	t.Helper()
	s, err := console.New(console.Options{Runner: directRunner(t), TempDir: t.TempDir(), ExamplesDir: t.TempDir(),
		ReadTimeout: shortTimeout, IdleTimeout: shortTimeout, Log: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := s.HTTPServer()
	go hs.Serve(ln)
	t.Cleanup(func() {
		hs.Close()
		s.Close()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTrickledUploadCut: a start request refused before its body is read
// (here: no session cookie), whose body then trickles in, is hung up on.
func TestTrickledUploadCut(t *testing.T) {
	addr := serveShort(t)
	c := dial(t, addr)
	slowclient.TrickleBody(t, c, "POST /api/runs HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 200000\r\n\r\n--x", shortTimeout/10)
}

// TestIdleVisitorCut: a kept-alive connection that sends nothing more is
// hung up on.
func TestIdleVisitorCut(t *testing.T) {
	addr := serveShort(t)
	c := dial(t, addr)
	slowclient.GoQuiet(t, c, "GET /api/info HTTP/1.1\r\nHost: "+addr+"\r\n\r\n", http.StatusOK)
}

// TestSlowHeadersCut: headers that never end are cut.
func TestSlowHeadersCut(t *testing.T) {
	addr := serveShort(t)
	c := dial(t, addr)
	io.WriteString(c, "GET /api/info HTTP/1.1\r\nHost: "+addr+"\r\nX-Slow: "+strings.Repeat("a", 10))
	slowclient.HungUp(t, c, bufio.NewReader(c))
}
