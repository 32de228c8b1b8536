package qemu

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keeplog"
)

// TestVMLaunchRequestSecretService: a keep started with a secret service
// gets its URL and the roots file's PEM in its launch request.
func TestVMLaunchRequestSecretService(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	v := &VM{}
	s := keep.Spec{Backend: "nil", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: make([]byte, 32),
		AttachTimeout: time.Second, SecretServiceURL: "https://attest.example:8443"}
	r, err := v.launchRequest(s)
	if err != nil || r.SecretServiceURL != s.SecretServiceURL || r.SecretServiceRoots != nil {
		t.Fatalf("without roots: %v %+v", err, r)
	}
	s.SecretServiceCA = caFile
	if _, err := v.launchRequest(s); err == nil || !strings.Contains(err.Error(), "secret service roots: open "+caFile) {
		t.Fatalf("a missing roots file: %v", err)
	}
	os.WriteFile(caFile, []byte("not pem"), 0o600)
	if _, err := v.launchRequest(s); err == nil || !strings.Contains(err.Error(), "secret service roots: no PEM certificate") {
		t.Fatalf("a roots file without PEM: %v", err)
	}
	s.SecretServiceURL = ""
	if r, err := v.launchRequest(s); err != nil || r.SecretServiceURL != "" || r.SecretServiceRoots != nil {
		t.Fatalf("no service: %v %+v", err, r)
	}
}

// TestVMRelaysToService: the launcher's side of a VM keep (a fake guest
// on the channel socket instead of QEMU) relays the guest's connection to
// the keep's secret service and logs its open and close in the keep's log.
func TestVMRelaysToService(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // the service: an echo
		c, err := ln.Accept()
		if err != nil {
			return
		}
		io.Copy(c, c)
		c.Close()
	}()
	vi, out, guestLn := channelOnlyVM(t, "https://"+ln.Addr().String())
	dir := vi.dir
	echoed := make(chan string, 1)
	guest := helloGuest(guestLn)
	go func() { // the guest
		g := <-guest
		if g == nil {
			echoed <- "no session"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		sc, err := g.DialSecretService(ctx)
		if err != nil {
			echoed <- err.Error()
			return
		}
		sc.Write([]byte("through the relay"))
		sc.(interface{ CloseWrite() error }).CloseWrite()
		b, _ := io.ReadAll(sc)
		sc.Close()
		echoed <- string(b)
		code := 0
		g.Exit(vmproto.Exit{State: vmproto.StateExited, ExitCode: &code})
	}()
	ctx := helloVM(t, vi)
	if got := <-echoed; got != "through the relay" {
		t.Fatalf("the guest got %q", got)
	}
	select {
	case <-vi.channelDone:
	case <-ctx.Done():
		t.Fatal("the channel did not end")
	}
	out.Close()
	log, _ := os.ReadFile(keeplog.Path(dir))
	for _, want := range []string{"secret service relay: stream 1 open to " + ln.Addr().String(),
		"secret service relay: stream 1 to " + ln.Addr().String() + " closed after"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the keep's log lacks %q:\n%s", want, log)
		}
	}
}

// channelOnlyVM is the launcher's side of a VM keep without QEMU: the returned
// listener is the channel socket, where the test plays the guest.
func channelOnlyVM(t *testing.T, serviceURL string) (*vmInstance, *os.File, net.Listener) {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmrelay") // short: a unix socket goes in it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := keep.Spec{Backend: "nil", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: make([]byte, 32),
		AttachTimeout: time.Second, SecretServiceURL: serviceURL}
	req, err := (&VM{}).launchRequest(s)
	if err != nil {
		t.Fatal(err)
	}
	out, err := keeplog.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	vi := &vmInstance{dir: dir, req: req, attach: s.AttachTimeout, out: out, started: time.Now(),
		channelDone: make(chan struct{}), waited: make(chan struct{})}
	guestLn, err := net.Listen("unix", filepath.Join(dir, ChannelSocket))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guestLn.Close() })
	return vi, out, guestLn
}

// helloVM runs the host's handshake of vi, and returns a context that
// catches a hang (2 minutes).
func helloVM(t *testing.T, vi *vmInstance) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if _, err := vi.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// helloGuest plays the guest on the channel socket up to its hello, and
// passes it on (nil if the session failed).
func helloGuest(ln net.Listener) <-chan *vmproto.Guest {
	ch := make(chan *vmproto.Guest, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		g, _, err := vmproto.Accept(c)
		if err == nil {
			err = g.Hello([]byte("{}"))
		}
		if err != nil {
			g = nil
		}
		ch <- g
	}()
	return ch
}

// TestVMGuestBytesAfterClientLeft: a guest that sends delivery bytes
// after its client went away (or when none came) does not stall the
// host's reader of the channel behind a stream nobody reads: its exit
// status still arrives, and the channel ends.
func TestVMGuestBytesAfterClientLeft(t *testing.T) {
	vi, _, guestLn := channelOnlyVM(t, "")
	clientGone := make(chan struct{})
	guest := helloGuest(guestLn)
	go func() { // the guest
		g := <-guest
		if g == nil {
			return
		}
		<-clientGone
		g.Stream().Write(bytes.Repeat([]byte("x"), 4*vmproto.MaxData))
		code := 7
		g.Exit(vmproto.Exit{State: vmproto.StateExited, ExitCode: &code})
	}()
	ctx := helloVM(t, vi)
	client, err := net.Dial("unix", filepath.Join(vi.dir, keep.SocketFile))
	if err != nil {
		t.Fatal(err)
	}
	client.Close()
	close(clientGone)
	select {
	case <-vi.channelDone:
	case <-ctx.Done():
		t.Fatal("the channel's exit status never came: its reader waits behind delivery bytes nobody reads")
	}
	if r := keep.ReadExitRecord(vi.dir); r == nil || r.ExitCode == nil || *r.ExitCode != 7 {
		t.Fatalf("exit record %+v", r)
	}
}

// TestVMOutputLimit: a guest that logs without end fills the keep's output
// file up to its cap, no further: then one last line, the exit record
// "failed" (the guest's own exit status does not replace it), and the VM
// is to be killed.
func TestVMOutputLimit(t *testing.T) {
	if defaultMaxOutput != host.DefaultMaxOutput {
		t.Fatalf("a VM keep's default output cap %d, a process keep's %d", defaultMaxOutput, host.DefaultMaxOutput)
	}
	vi, _, guestLn := channelOnlyVM(t, "")
	const limit = 16 << 10
	vi.limitOutput(limit)
	guest := helloGuest(guestLn)
	go func() {
		g := <-guest
		if g == nil {
			return
		}
		line := strings.Repeat("x", vmproto.MaxLog)
		for i := 0; i < 4*limit/vmproto.MaxLog; i++ {
			g.Log(line)
		}
		code := 0
		g.Exit(vmproto.Exit{State: vmproto.StateExited, ExitCode: &code})
	}()
	ctx := helloVM(t, vi)
	select {
	case <-vi.channelDone:
	case <-ctx.Done():
		t.Fatal("the channel did not end")
	}
	select {
	case <-vi.overLimit:
	default:
		t.Fatal("the VM is not stopped at the output limit")
	}
	const last = "keep failed: output limit of 16384 bytes reached\n"
	b, _ := os.ReadFile(keeplog.Path(vi.dir))
	if len(b) > limit+len(last) || !strings.HasSuffix(string(b), last) {
		t.Fatalf("output file of %d bytes, ending %q", len(b), b[max(0, len(b)-80):])
	}
	if r := keep.ReadExitRecord(vi.dir); r == nil || r.State != vmproto.StateFailed || r.Reason != "output limit of 16384 bytes reached" {
		t.Fatalf("exit record %+v", r)
	}
}
