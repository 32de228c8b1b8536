package host

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/slowclient"
)

// Anonymous callers must not hold the API's connections (and the goroutine
// and buffers behind each) for as long as they like: these tests run the
// agent with short timeouts and expect it to hang up.

const shortTimeout = 300 * time.Millisecond

func shortTimeouts(c *Config) { c.ReadTimeout, c.IdleTimeout = shortTimeout, shortTimeout }

// dialAPI opens a raw TLS connection to the agent's API.
func (h *harness) dialAPI(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", strings.TrimPrefix(h.url, "https://"), &tls.Config{RootCAs: h.roots, ServerName: "localhost", NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestAPIIdleConnectionCut: a caller that sends one (unauthenticated)
// request and then nothing is hung up on.
func TestAPIIdleConnectionCut(t *testing.T) {
	h := newHarness(t, shortTimeouts)
	c := h.dialAPI(t)
	slowclient.GoQuiet(t, c, "GET /v1/host HTTP/1.1\r\nHost: localhost\r\n\r\n", http.StatusUnauthorized)
}

// TestAPITrickledBodyCut: a caller that announces a body and trickles it
// (the agent refuses it unauthenticated, then reads the rest to reuse the
// connection) is hung up on, however steadily it trickles.
func TestAPITrickledBodyCut(t *testing.T) {
	h := newHarness(t, shortTimeouts)
	c := h.dialAPI(t)
	slowclient.TrickleBody(t, c, "POST /v1/keeps HTTP/1.1\r\nHost: localhost\r\nContent-Length: 60000\r\n\r\n{", shortTimeout/10)
}

// TestAPIHeadersBounded: headers past the agent's bound are refused
// before any handler runs.
func TestAPIHeadersBounded(t *testing.T) {
	h := newHarness(t)
	c := h.dialAPI(t)
	go io.WriteString(c, "GET /v1/host HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+strings.Repeat("a", 2*maxHeaderBytes)+"\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("got %s, want 431", resp.Status)
	}
}

// TestAPIEventStreamOutlastsReadTimeout: a followed event stream is not
// cut by the read timeout (the request was read whole).
func TestAPIEventStreamOutlastsReadTimeout(t *testing.T) {
	h := newHarness(t, shortTimeouts)
	k := h.create(t, "nil", Limits{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	go func() {
		time.Sleep(5 * shortTimeout)
		h.client.Stop(ctx, k.ID)
	}()
	var last Event
	if err := h.client.Events(ctx, k.ID, true, func(e Event) { last = e }); err != nil {
		t.Fatal(err)
	}
	if last.Type != "ended" {
		t.Errorf("the stream ended after %q, not at the keep's end", last.Type)
	}
}

// addEvents records n events of size bytes each on keep id.
func (h *harness) addEvents(t *testing.T, id string, n, size int) {
	t.Helper()
	msg := strings.Repeat("x", size)
	for i := range n {
		if _, err := h.agent.st.addEvent(id, "probe", fmt.Sprintf("%d %s", i, msg), -1); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEventsPaged: the stored events go out a page at a time, all of them,
// in order.
func TestEventsPaged(t *testing.T) {
	h := newHarness(t)
	k := h.create(t, "nil", Limits{})
	h.addEvents(t, k.ID, 2*eventPage+7, 10)
	var got []Event
	if err := h.client.Events(context.Background(), k.ID, false, func(e Event) { got = append(got, e) }); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, e := range got {
		if i > 0 && e.Seq <= got[i-1].Seq {
			t.Fatalf("event %d has seq %d after %d", i, e.Seq, got[i-1].Seq)
		}
		if e.Type == "probe" {
			if want := fmt.Sprintf("%d ", n); !strings.HasPrefix(e.Message, want) {
				t.Fatalf("probe event %d: %.20q", n, e.Message)
			}
			n++
		}
	}
	if n != 2*eventPage+7 {
		t.Errorf("got %d of %d probe events", n, 2*eventPage+7)
	}
}

// TestEventsStalledReaderDropped: a client that asks for a keep's events
// (its output lines, up to 64 MiB) and stops reading does not hold the
// handler, and the events it did not take, for ever.
func TestEventsStalledReaderDropped(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.StreamWriteTimeout = shortTimeout })
	k := h.create(t, "nil", Limits{})
	// More than the loopback socket buffers hold.
	const n, size = 8000, 4 << 10
	h.addEvents(t, k.ID, n, size)
	c := h.dialAPI(t)
	io.WriteString(c, "GET /v1/keeps/"+k.ID+"/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "+h.token+"\r\n\r\n")
	deadline := time.Now().Add(2 * time.Minute) // a hang catcher
	for !strings.Contains(h.log.String(), "dropped an event stream") {
		if time.Now().After(deadline) {
			t.Fatal("the agent still writes to a client that stopped reading after 2 minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.SetReadDeadline(deadline)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.Copy(io.Discard, resp.Body)
	if got >= n*size {
		t.Errorf("the stalled client got all %d bytes of events", got)
	}
}

// TestRelayEndsWithKeep: a client that attached, then neither reads what
// the keep sends nor closes, does not hold the relay once the keep's
// process is gone. net.Pipe has no buffer: the keep's first bytes already
// block the relay's write to the client.
func TestRelayEndsWithKeep(t *testing.T) {
	a := &Agent{closing: make(chan struct{}), relayDrain: shortTimeout}
	client, clientPeer := net.Pipe() // clientPeer: the client, which never reads
	keepSide, keepPeer := net.Pipe() // keepPeer: the keep
	defer clientPeer.Close()
	gone := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		a.relay("k", client, client, keepSide, gone)
	}()
	if _, err := keepPeer.Write([]byte("output the client does not read")); err != nil {
		t.Fatal(err)
	}
	keepPeer.Close()
	close(gone)
	select {
	case <-ended:
	case <-time.After(slowclient.HangCatcher):
		t.Fatal("the relay still runs 2 minutes after its keep is gone")
	}
}

// TestAPIConnectionsPerClientBounded: one address holds at most
// Config.ClientConns connections open; one more is closed before TLS.
func TestAPIConnectionsPerClientBounded(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ClientConns = 2 })
	for range 2 {
		h.dialAPI(t)
	}
	c, err := tls.Dial("tcp", strings.TrimPrefix(h.url, "https://"), &tls.Config{RootCAs: h.roots, ServerName: "localhost"})
	if err == nil {
		c.Close()
		t.Fatal("a third connection from one address was served, the bound is 2")
	}
}
