package service

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// logLines records what ErrorLog passes on, as "warn: ..." and "info: ...".
type logLines struct {
	mu    sync.Mutex
	lines []string
	added chan struct{}
}

func newLogLines() *logLines { return &logLines{added: make(chan struct{}, 100)} }

func (l *logLines) add(level string) func(string, ...any) {
	return func(format string, a ...any) {
		l.mu.Lock()
		l.lines = append(l.lines, level+": "+fmt.Sprintf(format, a...))
		l.mu.Unlock()
		l.added <- struct{}{}
	}
}

func (l *logLines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func TestErrorLog(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 1, 0, 0, 0, time.UTC)
	type msg struct {
		after time.Duration // since t0
		text  string
	}
	tests := []struct {
		name string
		in   []msg
		want []string
	}{
		{"one probe, one short line",
			[]msg{{0, "http: TLS handshake error from 127.0.0.1:40312: EOF"}},
			[]string{"info: connection from 127.0.0.1:40312 closed before the TLS handshake (port probe?)"}},
		{"probes within a minute are counted, reported with the next line",
			[]msg{
				{0, "http: TLS handshake error from 127.0.0.1:1: EOF"},
				{time.Second, "http: TLS handshake error from [::1]:2: read tcp [::1]:8443->[::1]:2: read: connection reset by peer"},
				{30 * time.Second, "http: TLS handshake error from 10.0.0.7:3: EOF"},
				{59 * time.Second, "http: TLS handshake error from 10.0.0.7:4: unexpected EOF"},
				{61 * time.Second, "http: TLS handshake error from 10.0.0.8:5: write tcp 127.0.0.1:8443->10.0.0.8:5: write: broken pipe"},
			},
			[]string{
				"info: connection from 127.0.0.1:1 closed before the TLS handshake (port probe?)",
				"info: connection from 10.0.0.8:5 closed before the TLS handshake (port probe?; 3 more since 01:00:00)",
			}},
		{"real handshake failures are warnings, one line each, never counted away",
			[]msg{
				{0, "http: TLS handshake error from 127.0.0.1:1: EOF"},
				{time.Second, "http: TLS handshake error from 127.0.0.1:2: tls: client offered only unsupported versions: [301]"},
				{2 * time.Second, "http: TLS handshake error from 127.0.0.1:3: client sent an HTTP request to an HTTPS server"},
				{3 * time.Second, "http: TLS handshake error from 127.0.0.1:4: read tcp 127.0.0.1:8443->127.0.0.1:4: i/o timeout"},
			},
			[]string{
				"info: connection from 127.0.0.1:1 closed before the TLS handshake (port probe?)",
				"warn: TLS handshake with 127.0.0.1:2 failed: tls: client offered only unsupported versions: [301]",
				"warn: TLS handshake with 127.0.0.1:3 failed: client sent an HTTP request to an HTTPS server",
				"warn: TLS handshake with 127.0.0.1:4 failed: read tcp 127.0.0.1:8443->127.0.0.1:4: i/o timeout",
			}},
		{"other server errors pass whole",
			[]msg{
				{0, "http: Accept error: accept tcp 127.0.0.1:8443: accept4: too many open files; retrying in 5ms"},
				{0, "http: panic serving 127.0.0.1:9: boom\ngoroutine 7 [running]:\nmain.f()"},
				{0, "http: TLS handshake error from garbage"},
			},
			[]string{
				"warn: Accept error: accept tcp 127.0.0.1:8443: accept4: too many open files; retrying in 5ms",
				"warn: panic serving 127.0.0.1:9: boom\ngoroutine 7 [running]:\nmain.f()",
				"warn: TLS handshake error from garbage",
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := newLogLines()
			var now time.Time
			w := &errorLogWriter{warnf: got.add("warn"), infof: got.add("info"), now: func() time.Time { return now }}
			for _, m := range tc.in {
				now = t0.Add(m.after)
				// As http.Server does: Printf through a log.Logger.
				l := log.New(w, "", 0)
				l.Printf("%s", m.text)
			}
			if g := got.all(); strings.Join(g, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(g, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestErrorLogServer checks the real server's messages: a port probe and
// a plain HTTP request to the HTTPS port.
func TestErrorLogServer(t *testing.T) {
	got := newLogLines()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = ErrorLog(got.add("warn"), got.add("info"))
	srv.StartTLS()
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	wait := func() {
		t.Helper()
		select {
		case <-got.added:
		case <-time.After(2 * time.Minute):
			t.Fatalf("no log line; got %q", got.all())
		}
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().String()
	c.Close()
	wait()

	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	io.ReadAll(c)
	c.Close()
	wait()

	want := []string{
		"info: connection from " + local + " closed before the TLS handshake (port probe?)",
		"warn: TLS handshake with 127.0.0.1:",
	}
	g := got.all()
	if len(g) != 2 || g[0] != want[0] || !strings.HasPrefix(g[1], want[1]) || !strings.HasSuffix(g[1], "failed: client sent an HTTP request to an HTTPS server") {
		t.Errorf("got %q, want %q and a warning about plain HTTP", g, want)
	}
}
