package vmguest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// fakeMachine is a guest kernel in a test: its port is one end of a pipe.
type fakeMachine struct {
	port     net.Conn
	setupErr error
	cpu      time.Duration
	off      chan struct{}
	offOnce  sync.Once

	volumes map[string]string // virtio-fs tag → the folder it "mounts"
	mountMu sync.Mutex
	mounted []string // "TAG ro=BOOL" of each mount
}

func (m *fakeMachine) Setup(func(string, ...any)) error { return m.setupErr }
func (m *fakeMachine) OpenPort(name string) (io.ReadWriteCloser, error) {
	if name != vmproto.PortName {
		return nil, errNoPort
	}
	return m.port, nil
}
func (m *fakeMachine) Uptime() time.Duration  { return time.Second }
func (m *fakeMachine) CPUTime() time.Duration { return m.cpu }

// PowerOff ends the calling goroutine, as the real one ends the machine.
func (m *fakeMachine) PowerOff() {
	m.offOnce.Do(func() { m.port.Close(); close(m.off) })
	runtime.Goexit()
}

// boot runs the guest on a fake machine and returns the host's end of
// its port and the console.
func boot(t *testing.T) (net.Conn, *fakeMachine, *bytes.Buffer) {
	return bootCPU(t, 0)
}

// bootCPU is boot on a machine whose CPU clock reads cpu.
func bootCPU(t *testing.T, cpu time.Duration) (net.Conn, *fakeMachine, *bytes.Buffer) {
	t.Helper()
	return bootMachine(t, &fakeMachine{cpu: cpu})
}

// bootMachine is boot on m, whose port it makes.
func bootMachine(t *testing.T, m *fakeMachine) (net.Conn, *fakeMachine, *bytes.Buffer) {
	t.Helper()
	hostEnd, guestEnd := net.Pipe()
	m.port, m.off = guestEnd, make(chan struct{})
	console := &bytes.Buffer{}
	go func() {
		run(m, console)
		m.PowerOff()
	}()
	t.Cleanup(func() {
		hostEnd.Close()
		select {
		case <-m.off:
		case <-time.After(2 * time.Minute):
			t.Error("the guest did not power off")
		}
	})
	return hostEnd, m, console
}

// handshake runs the host's side of the channel with req and returns it
// and the keep's evidence from its hello.
func handshake(ctx context.Context, t *testing.T, conn net.Conn, req *vmproto.LaunchRequest, opts ...vmproto.HostOption) (*vmproto.Host, *evidence.Envelope) {
	t.Helper()
	h, err := vmproto.Handshake(ctx, conn, req, opts...)
	if err != nil {
		t.Fatal(err)
	}
	_, env, err := delivery.ParseHello(h.Hello())
	if err != nil {
		t.Fatal(err)
	}
	return h, env
}

func request(t *testing.T, backend string, sess *delivery.Session, digest string) *vmproto.LaunchRequest {
	nonce := make([]byte, 32)
	rand.Read(nonce)
	return &vmproto.LaunchRequest{Backend: backend, Nonce: nonce, Digest: digest, ClientKey: sess.KeyHash,
		AttachTimeoutMillis: 120000}
}

// TestGuestRunsWorkload runs the whole guest in-process with a simulated
// SEV-SNP backend whose CA and measurement come from the launch request.
func TestGuestRunsWorkload(t *testing.T) {
	art := cHello(t)
	conn, _, _ := boot(t)
	sess, _ := delivery.NewSession()
	ca, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	req := request(t, "sim-snp", sess, art.Digest.String())
	req.SimCA = ca.MarshalPEM()
	req.SimMeasurement = bytes.Repeat([]byte{0xab}, 48)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, env := handshake(ctx, t, conn, req)
	// The real verification path, trusting the CA the host sent.
	claims, err := verify.Envelope(env, verify.Options{SimRoots: ca.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	if claims.Platform != evidence.PlatformSNP || !bytes.Equal(claims.Measurement, req.SimMeasurement) ||
		!bytes.Equal(claims.Nonce, req.Nonce) || claims.WorkloadDigest != req.Digest {
		t.Fatalf("claims %+v", claims)
	}
	other, _ := sim.New()
	if _, err := verify.Envelope(env, verify.Options{SimRoots: other.Roots()}); err == nil {
		t.Fatal("evidence verified against another simulation CA")
	}
	ver := &delivery.Verified{Claims: claims, SPKI: claims.Key}
	var out bytes.Buffer
	res, err := sess.Deliver(ctx, h.Stream(), ver, delivery.Delivery{Artifact: art, Stdout: &out, Stderr: io.Discard})
	if err != nil || res.ExitCode != 0 || !strings.HasPrefix(out.String(), "hello from C in a keep\n") {
		t.Fatalf("deliver: %v, %+v, %q", err, res, out.String())
	}
	x, err := h.Wait()
	if err != nil || x.State != vmproto.StateExited || *x.ExitCode != 0 {
		t.Fatalf("exit %+v %v", x, err)
	}
}

// The keep's failures reach the host as its exit status, with the reason.
func TestGuestFailures(t *testing.T) {
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	sess, _ := delivery.NewSession()
	t.Run("bad sim CA", func(t *testing.T) {
		conn, _, console := boot(t)
		req := request(t, "sim-tdx", sess, digest)
		req.SimCA = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
		_, err := vmproto.Handshake(context.Background(), conn, req)
		if err == nil || !strings.Contains(err.Error(), "failed before its hello: launch request: simulation CA") {
			t.Fatalf("error %v", err)
		}
		_ = console
	})
	t.Run("no client", func(t *testing.T) {
		conn, _, _ := boot(t)
		req := request(t, "nil", sess, digest)
		req.AttachTimeoutMillis = 50
		h, err := vmproto.Handshake(context.Background(), conn, req)
		if err != nil {
			t.Fatal(err)
		}
		x, err := h.Wait()
		if err != nil || x.State != vmproto.StateFailed || !strings.Contains(x.Reason, "no client attached within 50ms") {
			t.Fatalf("exit %+v %v", x, err)
		}
	})
	t.Run("wall time", func(t *testing.T) {
		conn, m, _ := boot(t)
		req := request(t, "nil", sess, digest)
		req.Limits.WallSeconds = 1
		h, err := vmproto.Handshake(context.Background(), conn, req)
		if err != nil {
			t.Fatal(err)
		}
		x, err := h.Wait()
		if err != nil || x.State != vmproto.StateFailed || x.Reason != "wall time limit of 1s reached" {
			t.Fatalf("exit %+v %v", x, err)
		}
		<-m.off
	})
	t.Run("cpu time", func(t *testing.T) {
		conn, m, _ := bootCPU(t, 5*time.Second)
		req := request(t, "nil", sess, digest)
		req.Limits.CPUSeconds = 2
		h, err := vmproto.Handshake(context.Background(), conn, req)
		if err != nil {
			t.Fatal(err)
		}
		x, err := h.Wait()
		if err != nil || x.State != vmproto.StateFailed || x.Reason != "CPU time limit of 2s reached" {
			t.Fatalf("exit %+v %v", x, err)
		}
		<-m.off
	})
	t.Run("host breaks the protocol", func(t *testing.T) {
		conn, m, _ := boot(t)
		h, err := vmproto.Handshake(context.Background(), conn, request(t, "nil", sess, digest))
		if err != nil {
			t.Fatal(err)
		}
		// A raw launch frame where only data may come.
		conn.Write([]byte{vmproto.FrameLaunch, 0, 0, 0, 2, '{', '}'})
		x, err := h.Wait()
		if err != nil || x.State != vmproto.StateFailed || !strings.Contains(x.Reason, "after the launch request") {
			t.Fatalf("exit %+v %v", x, err)
		}
		<-m.off
	})
	t.Run("setup fails", func(t *testing.T) {
		hostEnd, guestEnd := net.Pipe()
		defer hostEnd.Close()
		m := &fakeMachine{port: guestEnd, off: make(chan struct{}), setupErr: io.ErrUnexpectedEOF}
		var console bytes.Buffer
		run(m, &console)
		if !strings.Contains(console.String(), "castellan: keep guest: error: unexpected EOF") {
			t.Fatalf("console %q", console.String())
		}
	})
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for name, port := range map[string]string{"vport1p1": "org.qemu.guest_agent.0\n", "vport2p1": "castellan\n"} {
		writeFile(t, sys+"/"+name+"/name", port)
	}
	if p, err := findPort(sys, "/dev", "castellan"); err != nil || p != "/dev/vport2p1" {
		t.Fatalf("%q %v", p, err)
	}
	if _, err := findPort(sys, "/dev", "other"); err == nil {
		t.Fatal("found a port that is not there")
	}
	if _, err := findPort(sys+"/missing", "/dev", "castellan"); err == nil {
		t.Fatal("found a port without sysfs")
	}
}

func TestLineWriter(t *testing.T) {
	var lines []string
	w := &lineWriter{send: func(s string) { lines = append(lines, s) }}
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n"))
	w.Write(bytes.Repeat([]byte("x"), vmproto.MaxLog+1))
	if len(lines) != 3 || lines[0] != "a" || lines[1] != "bc" || len(lines[2]) != vmproto.MaxLog+1 {
		t.Fatalf("%q", lines)
	}
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// MountVolume "mounts" a tag at the folder the test gave it.
func (m *fakeMachine) MountVolume(tag string, readOnly bool) (string, error) {
	m.mountMu.Lock()
	defer m.mountMu.Unlock()
	dir, ok := m.volumes[tag]
	if !ok {
		return "", errors.New("no such virtio-fs tag")
	}
	m.mounted = append(m.mounted, fmt.Sprintf("%s ro=%v", tag, readOnly))
	return dir, nil
}
