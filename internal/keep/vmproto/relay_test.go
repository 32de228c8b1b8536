package vmproto

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/kbs"
)

// tapConn records every byte the host reads and writes on the channel.
type tapConn struct {
	net.Conn
	mu  sync.Mutex
	all bytes.Buffer
}

func (c *tapConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.all.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *tapConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.all.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *tapConn) seen() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.all.Bytes())
}

// relayPair runs a session up to the hello over net.Pipe with req and
// returns both sides and the host's tapped channel.
func relayPair(t *testing.T, req *LaunchRequest, opts ...HostOption) (*Host, *Guest, *tapConn) {
	t.Helper()
	hc, gc := net.Pipe()
	tap := &tapConn{Conn: hc}
	guest := make(chan *Guest, 1)
	go func() {
		g, _, err := Accept(gc)
		if err != nil {
			guest <- nil
			return
		}
		g.Hello([]byte("{}"))
		guest <- g
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := Handshake(ctx, tap, req, opts...)
	if err != nil {
		t.Fatal(err)
	}
	g := <-guest
	if g == nil {
		t.Fatal("guest: no session")
	}
	t.Cleanup(func() {
		h.Close()
		h.Wait()
	})
	return h, g, tap
}

// serviceRequest is a launch request that names srv as the secret service.
func serviceRequest(srv *httptest.Server) *LaunchRequest {
	r := testRequest()
	r.SecretServiceURL = srv.URL
	r.SecretServiceRoots = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return r
}

// recordDial dials like a net.Dialer and records the addresses asked for.
type recordDial struct {
	mu    sync.Mutex
	addrs []string
}

func (d *recordDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.addrs = append(d.addrs, network+" "+addr)
	d.mu.Unlock()
	return (&net.Dialer{}).DialContext(ctx, network, addr)
}

func (d *recordDial) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.addrs...)
}

// drainEvents reads h's events; the function returns those read so far,
// all of them once the channel ended.
func drainEvents(h *Host) func() []string {
	var mu sync.Mutex
	var evs []string
	read := make(chan struct{})
	go func() {
		defer close(read)
		for e := range h.Events() {
			mu.Lock()
			evs = append(evs, e.Text)
			mu.Unlock()
		}
	}()
	return func() []string {
		select {
		case <-h.Done():
			<-read
		default:
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), evs...)
	}
}

// TestRelayHTTPS: the guest's HTTPS requests reach the host's service
// through the relay, TLS checked against the service's name and roots,
// bodies larger than the window both ways; the host dials only the
// service's address, sees only ciphertext and logs each stream.
func TestRelayHTTPS(t *testing.T) {
	const marker = "relayed-plaintext-marker-91c3"
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %d %s", marker, r.URL.Path, len(body), strings.Repeat("r", 3*StreamWindow))
	}))
	defer srv.Close()
	d := &recordDial{}
	req := serviceRequest(srv)
	h, g, tap := relayPair(t, req, WithRelayDial(d.dial))
	events := drainEvents(h)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(req.SecretServiceRoots)
	hc := kbs.HTTPClient(roots, 2*time.Minute, func(ctx context.Context, _, _ string) (net.Conn, error) {
		return g.DialSecretService(ctx)
	})
	big := strings.Repeat("q", 5*StreamWindow/2)
	resp, err := hc.Post(srv.URL+"/kbs/v0/auth", "text/plain", strings.NewReader(big))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := fmt.Sprintf("%s /kbs/v0/auth %d %s", marker, len(big), strings.Repeat("r", 3*StreamWindow))
	if string(body) != want {
		t.Fatalf("response of %d bytes, want %d", len(body), len(want))
	}
	hc.CloseIdleConnections()
	u, _ := url.Parse(srv.URL)
	for _, a := range d.seen() {
		if a != "tcp "+u.Host {
			t.Errorf("the host dialled %q, want only tcp %s", a, u.Host)
		}
	}
	if len(d.seen()) == 0 {
		t.Fatal("the host dialled nothing")
	}
	if bytes.Contains(tap.seen(), []byte(marker)) || bytes.Contains(tap.seen(), []byte("qqqqqqqq")) {
		t.Fatal("plaintext of the relayed connection on the host's channel")
	}
	// The closes arrive as events once both sides dropped the stream.
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(strings.Join(events(), "\n"), "closed after") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	log := strings.Join(events(), "\n")
	for _, w := range []string{"secret service relay: stream 1 open to " + u.Host, "secret service relay: stream 1 to " + u.Host + " closed after"} {
		if !strings.Contains(log, w) {
			t.Errorf("events lack %q:\n%s", w, log)
		}
	}
	// A TLS client that expects another name is refused by its own check:
	// the relay does not choose whom the keep trusts.
	other := kbs.HTTPClient(x509.NewCertPool(), 2*time.Minute, func(ctx context.Context, _, _ string) (net.Conn, error) {
		return g.DialSecretService(ctx)
	})
	if _, err := other.Get(srv.URL); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client without the service's roots: %v", err)
	}
	other.CloseIdleConnections()
}

// echoService accepts TCP connections and echoes each until its end, then
// closes it.
func echoService(t *testing.T) (string, chan struct{}) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ended := make(chan struct{}, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
				ended <- struct{}{}
			}()
		}
	}()
	return ln.Addr().String(), ended
}

// TestRelayHalfCloseAndBounds: a half-close reaches the service and its
// answer still arrives; at most MaxStreams streams are open at once and a
// closed one frees its place; deadlines work on a relayed connection.
func TestRelayHalfCloseAndBounds(t *testing.T) {
	addr, ended := echoService(t)
	req := testRequest()
	req.SecretServiceURL = "https://" + addr
	h, g, _ := relayPair(t, req)
	drainEvents(h)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := g.DialSecretService(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "ping" {
		t.Fatalf("echo %q %v", got, err)
	}
	c.Close()
	var open []net.Conn
	for range MaxStreams {
		c, err := g.DialSecretService(ctx)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if _, err := g.DialSecretService(ctx); err == nil || !strings.Contains(err.Error(), "at most 4") {
		t.Fatalf("a fifth stream: %v", err)
	}
	open[0].SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := open[0].Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	open[0].Close()
	<-ended // the host closed the service's connection
	for {
		c, err := g.DialSecretService(ctx)
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no stream after a close: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The session's end closes the service's connections.
	h.Close()
	for range MaxStreams - 1 {
		select {
		case <-ended:
		case <-ctx.Done():
			t.Fatal("a service connection outlived the session")
		}
	}
	if _, err := open[1].Write([]byte("x")); err == nil {
		t.Fatal("a write after the session ended")
	}
}

// TestRelayRefused: a host with no service, or one it cannot reach,
// refuses the open with a reason; the session goes on.
func TestRelayRefused(t *testing.T) {
	down := func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("connection refused")
	}
	withURL := testRequest()
	withURL.SecretServiceURL = "https://attest.example"
	for _, tc := range []struct {
		name  string
		req   *LaunchRequest
		want  string
		event string
	}{
		{"no service", testRequest(), "this keep was started with no attestation service", "stream 1 refused"},
		{"unreachable", withURL, "the host cannot connect to the secret service: connection refused", "cannot connect to attest.example:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, g, _ := relayPair(t, tc.req, WithRelayDial(down))
			events := drainEvents(h)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			_, err := g.DialSecretService(ctx)
			if !errors.Is(err, ErrRelayRefused) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a refusal with %q", err, tc.want)
			}
			// The refused id is dead; the next open gets a new one.
			if _, err := g.DialSecretService(ctx); !errors.Is(err, ErrRelayRefused) {
				t.Fatalf("second open: %v", err)
			}
			h.Close()
			h.Wait()
			if !strings.Contains(strings.Join(events(), "\n"), tc.event) {
				t.Fatalf("events %q lack %q", events(), tc.event)
			}
		})
	}
	// Before its hello the guest has no relay.
	hc, gc := net.Pipe()
	defer hc.Close()
	go func() {
		readFrame(hc)
		b, _ := json.Marshal(testRequest())
		writeFrame(hc, FrameLaunch, b)
	}()
	g, _, err := Accept(gc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.DialSecretService(context.Background()); err == nil || !strings.Contains(err.Error(), "before the hello") {
		t.Fatalf("open before the hello: %v", err)
	}
}

func relayFrame(typ byte, id uint32, rest []byte) []byte {
	return frame(typ, idPayload(id, rest))
}

// pipeDial is a service that accepts and never reads nor answers.
func pipeDial(t *testing.T) (DialFunc, *[]string) {
	var mu sync.Mutex
	var addrs []string
	return func(_ context.Context, _, addr string) (net.Conn, error) {
		mu.Lock()
		addrs = append(addrs, addr)
		mu.Unlock()
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		return a, nil
	}, &addrs
}

// TestRelayHostRefusesBadFrames: what an untrusted guest may not do
// ends the session with an error, and the host never dials anything but
// its service.
func TestRelayHostRefusesBadFrames(t *testing.T) {
	open := func(id uint32) []byte { return relayFrame(FrameOpen, id, nil) }
	chunk := bytes.Repeat([]byte("b"), MaxData)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		answer bool // wait for the answer to stream 1 before the rest
		want   string
	}{
		{"open twice", [][]byte{open(1), open(1)}, false, "open of stream 1: not a new stream id"},
		{"open an old id", [][]byte{open(2), open(1)}, false, "open of stream 1: not a new stream id (the last was 2)"},
		{"too many streams", [][]byte{open(1), open(2), open(3), open(4), open(5)}, false, "open of stream 5: 4 streams open already, at most 4"},
		{"bytes for an unknown stream", [][]byte{relayFrame(FrameBytes, 9, []byte("x"))}, false, "stream 9, which is not open"},
		{"credit for an unknown stream", [][]byte{relayFrame(FrameCredit, 9, []byte{0, 0, 0, 1})}, false, "stream 9, which is not open"},
		{"close of an unknown stream", [][]byte{relayFrame(FrameClose, 9, nil)}, false, "stream 9, which is not open"},
		{"answer from the guest", [][]byte{relayFrame(FrameAnswer, 1, nil)}, false, "answer frame from the guest"},
		{"short open", [][]byte{frame(FrameOpen, []byte{0, 0, 1})}, false, "frame of 3 bytes"},
		{"long fin", [][]byte{frame(FrameFin, []byte{0, 0, 0, 1, 0})}, false, "more than 4"},
		{"empty bytes", [][]byte{open(1), relayFrame(FrameBytes, 1, nil)}, true, "frame of 4 bytes"},
		{"oversize bytes", [][]byte{relayFrame(FrameBytes, 1, append(chunk, 'x'))}, false, "more than 32772"},
		{"beyond the window", [][]byte{open(1), relayFrame(FrameBytes, 1, chunk), relayFrame(FrameBytes, 1, chunk),
			relayFrame(FrameBytes, 1, chunk), relayFrame(FrameBytes, 1, chunk), relayFrame(FrameBytes, 1, chunk)}, true, "more than 65536 unread bytes"},
		{"credit beyond the window", [][]byte{open(1), relayFrame(FrameCredit, 1, []byte{0, 0, 0, 1})}, true, "credit beyond its window"},
		{"two fins", [][]byte{open(1), relayFrame(FrameFin, 1, nil), relayFrame(FrameFin, 1, nil)}, true, "two ends of stream 1"},
		{"bytes after fin", [][]byte{open(1), relayFrame(FrameFin, 1, nil), relayFrame(FrameBytes, 1, []byte("x"))}, true, "bytes for stream 1 after its end"},
		{"bytes after close", [][]byte{open(1), relayFrame(FrameClose, 1, nil), relayFrame(FrameBytes, 1, []byte("x"))}, true, "stream 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dial, addrs := pipeDial(t)
			req := testRequest()
			req.SecretServiceURL = "https://attest.example:8443"
			h := scriptedGuest(t, req, func(gc net.Conn) {
				gc.Write(frame(FrameHello, []byte("{}")))
				frames := tc.frames
				if tc.answer {
					gc.Write(frames[0])
					for {
						typ, _, err := readFrame(gc)
						if err != nil {
							return
						}
						if typ == FrameAnswer {
							break
						}
					}
					frames = frames[1:]
				}
				go io.Copy(io.Discard, gc)
				writeFrames(gc, frames)
			}, WithRelayDial(dial))
			drainEvents(h)
			_, err := h.Wait()
			if !errors.Is(err, ErrNoExit) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			for _, a := range *addrs {
				if a != "attest.example:8443" {
					t.Fatalf("the host dialled %q", a)
				}
			}
		})
	}
}

// TestRelayGuestRefusesBadFrames: what an untrusted host may not do ends
// the guest's session with a protocol error.
func TestRelayGuestRefusesBadFrames(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame []byte
		want  string
	}{
		{"answer for an unopened stream", relayFrame(FrameAnswer, 7, nil), "answer for stream 7, which was not opened"},
		{"open from the host", relayFrame(FrameOpen, 1, nil), "open frame from the host"},
		{"bytes for an unknown stream", relayFrame(FrameBytes, 3, []byte("x")), "stream 3, which is not open"},
		{"oversize answer", relayFrame(FrameAnswer, 1, make([]byte, MaxRefusal+1)), "more than 516"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, gc := net.Pipe()
			go func() {
				readFrame(hc)
				b, _ := json.Marshal(testRequest())
				hc.Write(frame(FrameLaunch, b))
				readFrame(hc) // hello
				go io.Copy(io.Discard, hc)
				hc.Write(tc.frame)
			}()
			g, _, err := Accept(gc)
			if err != nil {
				t.Fatal(err)
			}
			g.Hello([]byte("{}"))
			select {
			case err := <-g.ProtocolErrors():
				if !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("error %v, want %q", err, tc.want)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("no protocol error")
			}
			if _, err := g.DialSecretService(context.Background()); err == nil {
				t.Fatal("an open after the session ended")
			}
		})
	}
}

// TestLaunchRequestSecretService: the service fields are checked as a
// process keep's --secret-service is.
func TestLaunchRequestSecretService(t *testing.T) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	srv.Close()
	good := serviceRequest(srv)
	for _, tc := range []struct {
		name string
		mod  func(r *LaunchRequest)
		want string
	}{
		{"ok", func(*LaunchRequest) {}, ""},
		{"system roots", func(r *LaunchRequest) { r.SecretServiceRoots = nil }, ""},
		{"http", func(r *LaunchRequest) { r.SecretServiceURL = "http://attest.example" }, "is not an https://host[:port] URL"},
		{"roots without url", func(r *LaunchRequest) { r.SecretServiceURL = "" }, "secret_service_roots without secret_service_url"},
		{"bad roots", func(r *LaunchRequest) { r.SecretServiceRoots = []byte("not pem") }, "no PEM certificate"},
		{"huge roots", func(r *LaunchRequest) { r.SecretServiceRoots = make([]byte, 65<<10) }, "more than 65536"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := *good
			tc.mod(&r)
			b, _ := json.Marshal(&r)
			_, err := ParseLaunchRequest(b)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	for url, addr := range map[string]string{"https://attest.example": "attest.example:443", "https://10.0.0.1:8443/kbs": "10.0.0.1:8443", "https://[::1]:9": "[::1]:9", "": ""} {
		r := &LaunchRequest{SecretServiceURL: url}
		if got := r.serviceAddr(); got != addr {
			t.Errorf("serviceAddr of %q = %q, want %q", url, got, addr)
		}
	}
}

// FuzzRelayHost feeds the host arbitrary guest frames after the hello,
// with a service configured: no panic, no hang, Wait returns, and nothing
// but the service's address is dialled.
func FuzzRelayHost(f *testing.F) {
	hello := frame(FrameHello, []byte("{}"))
	open1 := relayFrame(FrameOpen, 1, nil)
	f.Add(append(append(hello, open1...), relayFrame(FrameBytes, 1, []byte("x"))...))
	f.Add(append(append(append(hello, open1...), relayFrame(FrameClose, 1, nil)...), relayFrame(FrameOpen, 2, nil)...))
	f.Add(append(append(hello, open1...), open1...))
	f.Add(append(hello, relayFrame(FrameCredit, 1, []byte{0xff, 0xff, 0xff, 0xff})...))
	f.Add(append(hello, relayFrame(FrameFin, 3, nil)...))
	f.Add(append(hello, []byte{FrameBytes, 0, 0, 0, 2, 0, 0}...))
	f.Fuzz(func(t *testing.T, in []byte) {
		var mu sync.Mutex
		var bad string
		dial := func(_ context.Context, _, addr string) (net.Conn, error) {
			if addr != "attest.example:8443" {
				mu.Lock()
				bad = addr
				mu.Unlock()
			}
			a, b := net.Pipe()
			go io.Copy(io.Discard, b)
			return a, nil
		}
		req := testRequest()
		req.SecretServiceURL = "https://attest.example:8443"
		r := io.MultiReader(bytes.NewReader(frame(FrameVersion, []byte(Version))), bytes.NewReader(in))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h, err := Handshake(ctx, &fakeConn{Reader: r}, req, WithRelayDial(dial))
		if err != nil {
			return
		}
		go io.Copy(io.Discard, h.Stream())
		h.Wait()
		for range h.Events() {
		}
		if bad != "" {
			t.Fatalf("dialled %q", bad)
		}
	})
}

// FuzzRelayGuest feeds the guest arbitrary host frames after the hello,
// with one open stream: no panic, and the session ends.
func FuzzRelayGuest(f *testing.F) {
	f.Add(relayFrame(FrameAnswer, 1, nil))
	f.Add(append(relayFrame(FrameAnswer, 1, nil), relayFrame(FrameBytes, 1, []byte("abc"))...))
	f.Add(append(relayFrame(FrameAnswer, 1, nil), relayFrame(FrameClose, 1, nil)...))
	f.Add(relayFrame(FrameAnswer, 1, []byte("no service")))
	f.Add(relayFrame(FrameAnswer, 2, nil))
	f.Add(append(relayFrame(FrameAnswer, 1, nil), relayFrame(FrameCredit, 1, []byte{0, 1, 0, 0})...))
	f.Fuzz(func(t *testing.T, in []byte) {
		launch, _ := json.Marshal(testRequest())
		hostEnd, gc := net.Pipe()
		defer hostEnd.Close()
		go func() {
			readFrame(hostEnd)
			writeFrame(hostEnd, FrameLaunch, launch)
			readFrame(hostEnd) // hello
			readFrame(hostEnd) // the open
			go io.Copy(io.Discard, hostEnd)
			hostEnd.Write(in)
			hostEnd.Close()
		}()
		g, _, err := Accept(gc)
		if err != nil {
			t.Fatal(err)
		}
		g.Hello([]byte("{}"))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if c, err := g.DialSecretService(ctx); err == nil {
			go io.Copy(io.Discard, c)
			c.Write([]byte("x"))
		}
		<-g.relay.done
	})
}

// TestRelayHostStallsGuestThatDoesNotRead: a guest that opens stream
// after stream and never reads the host's answers does not make the host
// start a goroutine per open (each waiting to write its refusal): the
// host stops reading the guest once maxRelayEntries answers wait, and
// says so once in the keep's log.
func TestRelayHostStallsGuestThatDoesNotRead(t *testing.T) {
	down := func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("connection refused")
	}
	withURL := testRequest()
	withURL.SecretServiceURL = "https://attest.example"
	const opens = 64
	for _, tc := range []struct {
		name string
		req  *LaunchRequest
	}{
		{"no service", testRequest()},
		{"unreachable", withURL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			written := make(chan int, 1)
			h := scriptedGuest(t, tc.req, func(gc net.Conn) {
				gc.Write(frame(FrameHello, []byte("{}")))
				n := 0
				for id := uint32(1); id <= opens; id++ {
					if _, err := gc.Write(relayFrame(FrameOpen, id, nil)); err != nil {
						break
					}
					n++
				}
				written <- n
			}, WithRelayDial(down))
			events := drainEvents(h)
			// The host must stop reading such a guest: it stalls (and says
			// so), or, when a fifth open comes before it saw the first four
			// refused, ends the session for the broken bound. Either way it
			// reads only a few opens, never one goroutine per open.
			deadline := time.Now().Add(2 * time.Minute)
			n := -1
			for n < 0 && !strings.Contains(strings.Join(events(), "\n"), "the guest does not read the host's answers") {
				select {
				case n = <-written:
				default:
					if time.Now().After(deadline) {
						t.Fatal("the host neither stalled nor ended the session")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			h.Close()
			if n < 0 {
				n = <-written
			}
			if n > maxRelayEntries+1 {
				t.Fatalf("the guest wrote %d opens and reads nothing, and the host read them all (each answer waits in a goroutine of its own); want at most %d", n, maxRelayEntries+1)
			}
			h.Wait()
		})
	}
}

// TestRelayHostCountsClosingStreams: an honest guest at MaxStreams that
// got the host's close of a stream forgets it and opens another; the host
// has not forgotten it yet (its close is still being written) and must
// not count it against the guest.
func TestRelayHostCountsClosingStreams(t *testing.T) {
	dial, _ := pipeDial(t)
	gate := make(chan struct{})
	closeSent := make(chan struct{}, 8)
	answered := make(chan uint32, 8)
	m := newRelayMux(false, func(typ byte, p []byte) error {
		id := binary.BigEndian.Uint32(p)
		switch {
		case typ == FrameAnswer:
			answered <- id
		case typ == FrameClose && id == 1:
			// The guest has the close; the host is slow to return.
			closeSent <- struct{}{}
			<-gate
		}
		return nil
	})
	m.addr, m.dial, m.event = "attest.example:443", dial, func(string) {}
	defer func() {
		close(gate)
		m.shutdown()
	}()
	for id := uint32(1); id <= MaxStreams; id++ {
		if err := m.handle(FrameOpen, idPayload(id, nil)); err != nil {
			t.Fatal(err)
		}
		<-answered
	}
	if err := m.handle(FrameClose, idPayload(1, nil)); err != nil {
		t.Fatal(err)
	}
	<-closeSent
	if err := m.handle(FrameOpen, idPayload(MaxStreams+1, nil)); err != nil {
		t.Fatalf("open after a close the guest has seen: %v", err)
	}
	// A fifth live stream is still refused.
	if err := m.handle(FrameOpen, idPayload(MaxStreams+2, nil)); err == nil || !strings.Contains(err.Error(), "at most 4") {
		t.Fatalf("a fifth live stream: %v", err)
	}
}

// TestRelayHostBoundsOpens: a guest that opens and closes streams without
// end makes the host dial its service MaxOpens times, and is refused
// after that (one log line), its session going on.
func TestRelayHostBoundsOpens(t *testing.T) {
	dial, addrs := pipeDial(t)
	req := testRequest()
	req.SecretServiceURL = "https://attest.example:8443"
	h, g, _ := relayPair(t, req, WithRelayDial(dial))
	events := drainEvents(h)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; i < MaxOpens; i++ {
		c, err := g.DialSecretService(ctx)
		if err != nil {
			t.Fatalf("open %d: %v", i+1, err)
		}
		c.Close()
	}
	for i := 0; i < 3; i++ {
		_, err := g.DialSecretService(ctx)
		if !errors.Is(err, ErrRelayRefused) || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", MaxOpens)) {
			t.Fatalf("open beyond the bound: %v", err)
		}
	}
	h.Close()
	h.Wait()
	if len(*addrs) != MaxOpens {
		t.Fatalf("the host dialled %d times, want %d", len(*addrs), MaxOpens)
	}
	if n := strings.Count(strings.Join(events(), "\n"), "later ones refused"); n != 1 {
		t.Fatalf("%d log lines about the refused opens, want 1", n)
	}
}
