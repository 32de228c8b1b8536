package vmproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func testRequest() *LaunchRequest {
	return &LaunchRequest{
		Backend: "nil", Nonce: []byte("nonce"), Digest: testDigest,
		ClientKey: bytes.Repeat([]byte{7}, 32), Limits: Limits{WallSeconds: 60},
		AttachTimeoutMillis: 120000,
	}
}

func frame(typ byte, p []byte) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(p)))
	return append(b, p...)
}

func TestHelloSizeCoversDelivery(t *testing.T) {
	if MaxHello < delivery.MaxHelloSize {
		t.Fatalf("MaxHello %d < delivery.MaxHelloSize %d", MaxHello, delivery.MaxHelloSize)
	}
}

// TestSession runs a whole keep session over net.Pipe: launch request,
// hello, logs and state, delivery bytes both ways, exit status.
func TestSession(t *testing.T) {
	hc, gc := net.Pipe()
	req := testRequest()
	guestErr := make(chan error, 1)
	go func() {
		guestErr <- func() error {
			g, got, err := Accept(gc)
			if err != nil {
				return err
			}
			if got.Digest != req.Digest || string(got.Nonce) != "nonce" || got.AttachTimeout() != 2*time.Minute {
				return errors.New("launch request changed in transit")
			}
			g.Log("booted")
			if err := g.Hello([]byte(`{"hello":1}`)); err != nil {
				return err
			}
			s := g.Stream()
			buf := make([]byte, 4)
			if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
				return errors.New("no ping")
			}
			g.State("running")
			big := bytes.Repeat([]byte("x"), 3*MaxData+5) // several frames
			if _, err := s.Write(append([]byte("pong"), big...)); err != nil {
				return err
			}
			code := 3
			return g.Exit(Exit{State: StateExited, ExitCode: &code})
		}()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := Handshake(ctx, hc, req)
	if err != nil {
		t.Fatal(err)
	}
	if string(h.Hello()) != `{"hello":1}` {
		t.Fatalf("hello %q", h.Hello())
	}
	if _, err := h.Stream().Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(h.Stream())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, []byte("pong")) || len(got) != 4+3*MaxData+5 {
		t.Fatalf("stream: %d bytes", len(got))
	}
	x, err := h.Wait()
	if err != nil || x.State != StateExited || *x.ExitCode != 3 {
		t.Fatalf("exit %+v, %v", x, err)
	}
	if err := <-guestErr; err != nil {
		t.Fatal(err)
	}
	var evs []string
	for e := range h.Events() {
		evs = append(evs, e.Kind+":"+e.Text)
	}
	if strings.Join(evs, ",") != "log:booted,state:running" {
		t.Fatalf("events %q", evs)
	}
}

// fakeGuest answers the handshake with the given frames after reading
// the launch request, then closes.
func fakeGuest(t *testing.T, frames ...[]byte) *Host {
	t.Helper()
	return scriptedGuest(t, testRequest(), func(gc net.Conn) {
		go io.Copy(io.Discard, gc)
		writeFrames(gc, frames)
	})
}

// scriptedGuest is a guest that sends its version and reads the launch
// request req, then runs script on its end of the channel and closes it;
// it returns the host's side after the handshake with opts.
func scriptedGuest(t *testing.T, req *LaunchRequest, script func(gc net.Conn), opts ...HostOption) *Host {
	t.Helper()
	hc, gc := net.Pipe()
	go func() {
		defer gc.Close()
		gc.Write(frame(FrameVersion, []byte(Version)))
		readFrame(gc)
		script(gc)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := Handshake(ctx, hc, req, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// writeFrames writes frames to w until one fails.
func writeFrames(w io.Writer, frames [][]byte) {
	for _, f := range frames {
		if _, err := w.Write(f); err != nil {
			return
		}
	}
}

func TestHostAfterHello(t *testing.T) {
	exit0 := []byte(`{"state":"exited","exit_code":0}`)
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   string // "" = exit 0
	}{
		{"clean", [][]byte{frame(FrameExit, exit0)}, ""},
		{"vm died", nil, "without an exit status"},
		{"second hello", [][]byte{frame(FrameHello, []byte("x"))}, "after the hello"},
		{"launch from guest", [][]byte{frame(FrameLaunch, []byte("{}"))}, "after the hello"},
		{"data after end", [][]byte{frame(FrameEOF, nil), frame(FrameData, []byte("x"))}, "data after its end"},
		{"two ends", [][]byte{frame(FrameEOF, nil), frame(FrameEOF, nil)}, "two ends"},
		{"bad exit json", [][]byte{frame(FrameExit, []byte(`{"state":"exited"`))}, "exit status"},
		{"exited without code", [][]byte{frame(FrameExit, []byte(`{"state":"exited"}`))}, "without an exit code"},
		{"failed with code", [][]byte{frame(FrameExit, []byte(`{"state":"failed","exit_code":1}`))}, "failed with an exit code"},
		{"unknown state", [][]byte{frame(FrameExit, []byte(`{"state":"fine"}`))}, "state"},
		{"unknown field", [][]byte{frame(FrameExit, []byte(`{"state":"failed","why":1}`))}, "unknown field"},
		{"oversize log", [][]byte{append([]byte{FrameLog, 0, 0, 0x10, 1}, make([]byte, 0x1001)...)}, "more than 4096"},
		{"oversize data", [][]byte{{FrameData, 0xff, 0xff, 0xff, 0xff}}, "more than"},
		{"unknown type", [][]byte{{'Z', 0, 0, 0, 0}}, "unknown type"},
		{"truncated header", [][]byte{{FrameLog, 0}}, "truncated"},
		{"truncated payload", [][]byte{{FrameLog, 0, 0, 0, 9, 'a'}}, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := fakeGuest(t, append([][]byte{frame(FrameHello, []byte("{}"))}, tc.frames...)...)
			go io.Copy(io.Discard, h.Stream())
			x, err := h.Wait()
			if tc.want == "" {
				if err != nil || *x.ExitCode != 0 {
					t.Fatalf("%+v %v", x, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !errors.Is(err, ErrNoExit) {
				t.Fatalf("error %v is not ErrNoExit", err)
			}
		})
	}
}

func TestHandshakeRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first []byte
		more  [][]byte
		want  string
	}{
		{"wrong version", frame(FrameVersion, []byte("castellan-vm/0")), nil, "want version"},
		{"data first", frame(FrameData, []byte("x")), nil, "want version"},
		{"garbage", []byte("GET / HTTP/1.1\r\n"), nil, "bad frame"},
		{"closed before hello", frame(FrameVersion, []byte(Version)), nil, "before its hello"},
		{"failed before hello", frame(FrameVersion, []byte(Version)),
			[][]byte{frame(FrameExit, []byte(`{"state":"failed","reason":"no evidence device"}`))}, "failed before its hello: no evidence device"},
		{"data before hello", frame(FrameVersion, []byte(Version)), [][]byte{frame(FrameData, []byte("x"))}, "before the hello"},
		{"empty hello", frame(FrameVersion, []byte(Version)), [][]byte{frame(FrameHello, nil)}, "empty hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hc, gc := net.Pipe()
			go func() {
				defer gc.Close()
				gc.Write(tc.first)
				if _, _, err := readFrame(gc); err != nil { // the launch request
					return
				}
				go io.Copy(io.Discard, gc)
				for _, f := range tc.more {
					gc.Write(f)
				}
			}()
			h, err := Handshake(context.Background(), hc, testRequest())
			if h != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Handshake = %v, %v; want error with %q", h, err, tc.want)
			}
		})
	}
}

// A guest that never speaks: the context ends the handshake.
func TestHandshakeTimeout(t *testing.T) {
	hc, gc := net.Pipe()
	defer gc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Handshake(ctx, hc, testRequest())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v", err)
	}
}

// Nobody reads the events: the host drops them and still sees the exit.
func TestEventsDropped(t *testing.T) {
	frames := [][]byte{frame(FrameHello, []byte("{}"))}
	for range EventBuffer + 10 {
		frames = append(frames, frame(FrameLog, []byte("line")))
	}
	frames = append(frames, frame(FrameExit, []byte(`{"state":"exited","exit_code":0}`)))
	h := fakeGuest(t, frames...)
	if _, err := h.Wait(); err != nil {
		t.Fatal(err)
	}
	var last Event
	n := 0
	for e := range h.Events() {
		last = e
		n++
	}
	if n != EventBuffer || !strings.Contains(last.Text, "dropped") {
		t.Fatalf("%d events, last %q", n, last.Text)
	}
}

// The host closes the session while the guest's data waits for a reader.
func TestHostCloseUnblocks(t *testing.T) {
	h := fakeGuest(t, frame(FrameHello, []byte("{}")), frame(FrameData, []byte("unread")), frame(FrameLog, []byte("x")))
	time.Sleep(10 * time.Millisecond)
	h.Close()
	if _, err := h.Wait(); !errors.Is(err, ErrNoExit) {
		t.Fatalf("error %v", err)
	}
}

// Logs carry no control characters (a guest cannot forge log lines).
func TestPrintable(t *testing.T) {
	h := fakeGuest(t, frame(FrameHello, []byte("{}")), frame(FrameLog, []byte("a\nb\x1b[2J\xff")), frame(FrameExit, []byte(`{"state":"failed","reason":"x"}`)))
	h.Wait()
	e := <-h.Events()
	if e.Text != "a?b?[2J?" {
		t.Fatalf("%q", e.Text)
	}
}

func TestLaunchRequestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(r *LaunchRequest)
		want string
	}{
		{"ok", func(*LaunchRequest) {}, ""},
		{"sim with CA", func(r *LaunchRequest) { r.Backend, r.SimCA = "sim-snp", []byte("pem") }, ""},
		{"sim measurement", func(r *LaunchRequest) {
			r.Backend, r.SimCA, r.SimMeasurement = "sim-snp", []byte("pem"), make([]byte, 48)
		}, ""},
		{"auto", func(r *LaunchRequest) { r.Backend = "auto" }, "backend"},
		{"unknown backend", func(r *LaunchRequest) { r.Backend = "sev" }, "backend"},
		{"no nonce", func(r *LaunchRequest) { r.Nonce = nil }, "nonce"},
		{"huge nonce", func(r *LaunchRequest) { r.Nonce = make([]byte, 257) }, "nonce"},
		{"bad digest", func(r *LaunchRequest) { r.Digest = "md5:00" }, "digest"},
		{"short client key", func(r *LaunchRequest) { r.ClientKey = r.ClientKey[:31] }, "client_key"},
		{"negative limit", func(r *LaunchRequest) { r.Limits.MemoryBytes = -1 }, "negative"},
		{"no attach timeout", func(r *LaunchRequest) { r.AttachTimeoutMillis = 0 }, "attach timeout"},
		{"huge attach timeout", func(r *LaunchRequest) { r.AttachTimeoutMillis = 1 << 62 }, "attach timeout"},
		{"sim CA for nil", func(r *LaunchRequest) { r.SimCA = []byte("pem") }, "simulation material"},
		{"sim without CA", func(r *LaunchRequest) { r.Backend = "sim-tdx" }, "without its simulation CA"},
		{"measurement for tdx", func(r *LaunchRequest) {
			r.Backend, r.SimCA, r.SimMeasurement = "sim-tdx", []byte("pem"), make([]byte, 48)
		}, "sim_measurement"},
		{"short measurement", func(r *LaunchRequest) {
			r.Backend, r.SimCA, r.SimMeasurement = "sim-snp", []byte("pem"), make([]byte, 32)
		}, "sim_measurement"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRequest()
			tc.mod(r)
			b, _ := json.Marshal(r)
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
}

// guestInput runs Accept on raw host bytes.
func guestInput(in []byte) error {
	_, _, err := Accept(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(in), io.Discard})
	return err
}

func TestAcceptRefusals(t *testing.T) {
	good, _ := json.Marshal(testRequest())
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"ok", frame(FrameLaunch, good), ""},
		{"nothing", nil, "EOF"},
		{"data first", frame(FrameData, []byte("x")), "want the launch request"},
		{"oversize launch", []byte{FrameLaunch, 0x7f, 0xff, 0xff, 0xff}, "more than"},
		{"truncated launch", frame(FrameLaunch, good)[:40], "truncated"},
		{"not json", frame(FrameLaunch, []byte("backend=nil")), "launch request"},
		{"two values", frame(FrameLaunch, append(append([]byte{}, good...), good...)), "after the JSON value"},
		{"unknown field", frame(FrameLaunch, []byte(`{"backend":"nil","kernel_args":"x"}`)), "unknown field"},
		{"unknown type", []byte{0, 0, 0, 0, 0}, "unknown type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := guestInput(tc.in)
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
}

// After the launch request the host may send only data and its end; the
// guest reports anything else.
func TestGuestRefusesLateFrames(t *testing.T) {
	hc, gc := net.Pipe()
	go func() {
		readFrame(hc)
		b, _ := json.Marshal(testRequest())
		hc.Write(frame(FrameLaunch, b))
		readFrame(hc) // hello
		go io.Copy(io.Discard, hc)
		hc.Write(frame(FrameLaunch, b))
	}()
	g, _, err := Accept(gc)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Hello([]byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-g.ProtocolErrors():
		if !strings.Contains(err.Error(), "after the launch request") {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("no protocol error")
	}
	// The keep's stream is closed.
	if _, err := g.Stream().Read(make([]byte, 1)); err == nil {
		t.Fatal("stream still open")
	}
}

// The stream's read deadline works (a client's context cancels through
// it), and CloseWrite then Write fails while reads go on.
func TestStreamDeadlineAndHalfClose(t *testing.T) {
	got := make(chan []byte, 1)
	h := scriptedGuest(t, testRequest(), func(gc net.Conn) {
		gc.Write(frame(FrameHello, []byte("{}")))
		var in []byte
		for {
			typ, p, err := readFrame(gc)
			if err != nil || typ == FrameEOF {
				break
			}
			in = append(in, p...)
		}
		got <- in
		gc.Write(frame(FrameData, []byte("after")))
		gc.Write(frame(FrameExit, []byte(`{"state":"exited","exit_code":0}`)))
	})
	s := h.Stream()
	s.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	s.SetReadDeadline(time.Time{})
	s.Write([]byte("to the keep"))
	s.(interface{ CloseWrite() error }).CloseWrite()
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("write after CloseWrite")
	}
	if string(<-got) != "to the keep" {
		t.Fatal("the guest did not get the bytes")
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(s, b); err != nil || string(b) != "after" {
		t.Fatalf("read after CloseWrite: %q %v", b, err)
	}
	if _, err := h.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestDial(t *testing.T) {
	dir, err := os.MkdirTemp("", "vmp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := dir + "/channel.sock"
	go func() {
		time.Sleep(50 * time.Millisecond) // the socket appears late, as QEMU's does
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return
		}
		c, _ := ln.Accept()
		c.Close()
		ln.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if _, err := Dial(ctx2, dir+"/none.sock"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v", err)
	}
}

// TestGuestExitNamesProtocolBreak: once the host broke the protocol, the
// guest's exit status says so, whatever the keep made of its stream's
// end (a keep that lost its client would otherwise report that instead).
func TestGuestExitNamesProtocolBreak(t *testing.T) {
	hc, gc := net.Pipe()
	defer hc.Close()
	exit := make(chan []byte, 1)
	go func() {
		readFrame(hc) // version
		b, _ := json.Marshal(testRequest())
		hc.Write(frame(FrameLaunch, b))
		readFrame(hc) // hello
		hc.Write(frame(FrameHello, []byte("{}")))
		for {
			typ, p, err := readFrame(hc)
			if err != nil {
				exit <- nil
				return
			}
			if typ == FrameExit {
				exit <- p
				return
			}
		}
	}()
	g, _, err := Accept(gc)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Hello([]byte("{}")); err != nil {
		t.Fatal(err)
	}
	// The keep sees its stream end, and reports a clean exit.
	if _, err := g.Stream().Read(make([]byte, 1)); err == nil {
		t.Fatal("the stream goes on after the host broke the protocol")
	}
	code := 0
	go g.Exit(Exit{State: StateExited, ExitCode: &code})
	x, err := ParseExit(<-exit)
	if err != nil {
		t.Fatal(err)
	}
	if x.State != StateFailed || !strings.Contains(x.Reason, "from the host after the launch request") {
		t.Fatalf("exit %+v, want the host's protocol break", x)
	}
}
