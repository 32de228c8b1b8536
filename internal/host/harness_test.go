package host

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// keepArg makes the test binary act as the keep process when the agent
// re-executes it.
const keepArg = "castellan-test-keep"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == keepArg {
		os.Exit(KeepMain(os.Args[2:], os.Stderr))
	}
	if os.Getenv(fakeQEMUEnv) != "" {
		os.Exit(fakeQEMUMain(os.Args[1:]))
	}
	// The simulation CA lives in a folder of this run, shared with the
	// keep processes through the environment.
	dir, err := os.MkdirTemp("", "castellan-host-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("CASTELLAN_CONFIG_DIR", dir)
	code := m.Run()
	os.RemoveAll(dir)
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
	os.Exit(code)
}

// stdio is the files part of a config with the usual three streams.
const stdio = "[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"

// syncBuffer is a goroutine-safe log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func (s *syncBuffer) String() string { return string(s.Bytes()) }

type harness struct {
	t        testing.TB
	cfg      Config
	agent    *Agent
	url      string
	roots    *x509.CertPool
	token    string
	client   *Client
	log      *syncBuffer
	relay    *syncBuffer
	cancel   context.CancelFunc
	served   chan struct{}
	stateDir string
}

func newHarness(t testing.TB, mods ...func(*Config)) *harness {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("", "cst-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	h := &harness{t: t, log: &syncBuffer{}, relay: &syncBuffer{}, stateDir: state}
	h.cfg = Config{
		StateDir:      state,
		KeepCommand:   []string{exe, keepArg},
		AttachTimeout: 5 * time.Minute, // a hang-catcher: the restart test waits across an agent restart
		ReadyTimeout:  2 * time.Minute,
		Logf:          func(f string, a ...any) { fmt.Fprintf(h.log, f+"\n", a...) },
		RelayTap:      func(_ string, _ bool, p []byte) { h.relay.Write(p) },
	}
	for _, m := range mods {
		m(&h.cfg)
	}
	h.token, err = CreateToken(state, "test")
	if err != nil {
		t.Fatal(err)
	}
	h.start()
	t.Cleanup(func() {
		if h.agent != nil {
			h.agent.StopKeeps()
			h.stop()
		}
	})
	return h
}

// start starts (or restarts) the agent on the harness's state folder.
func (h *harness) start() {
	t := h.t
	t.Helper()
	a, err := New(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	if _, err := a.TLSCertificate(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.served = make(chan struct{})
	go func() {
		defer close(h.served)
		a.Serve(ctx, ln)
	}()
	h.url = "https://" + ln.Addr().String()
	if _, err := a.TLSCertificate(); err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(h.stateDir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	h.roots = x509.NewCertPool()
	h.roots.AppendCertsFromPEM(pem)
	h.client, err = NewClient(h.url, h.token, h.roots)
	if err != nil {
		t.Fatal(err)
	}
}

// stop ends the agent abruptly: the server and database close, keeps are
// left running, as when the agent process is killed.
func (h *harness) stop() {
	h.cancel()
	<-h.served
	h.client.CloseIdleConnections()
	h.agent.Close()
	h.agent = nil
}

func artifact(t testing.TB, wasmPath string, cfg []byte) *workload.Artifact {
	t.Helper()
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	art, err := workload.New(wasm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return art
}

func simRoots(t testing.TB) []*x509.Certificate {
	t.Helper()
	roots, _, err := tee.SimRoots()
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

// deploy runs one confidential deployment and returns the output.
func (h *harness) deploy(ctx context.Context, backend string, art *workload.Artifact, v delivery.Verifier, mod func(*DeployOptions)) (*Keep, *delivery.Result, string, string, error) {
	var stdout, stderr syncBuffer
	o := DeployOptions{Backend: backend, Verifier: v, Delivery: delivery.Delivery{Artifact: art, Stdout: &stdout, Stderr: &stderr}}
	if mod != nil {
		mod(&o)
	}
	k, res, err := h.client.Deploy(ctx, o)
	return k, res, stdout.String(), stderr.String(), err
}

// waitEnded follows a keep's events until it ended and returns its record.
func (h *harness) waitEnded(id string) *Keep {
	h.t.Helper()
	return h.waitEndedWithin(id, 2*time.Minute)
}

// waitEndedWithin is waitEnded with its own bound (a hang catcher).
func (h *harness) waitEndedWithin(id string, d time.Duration) *Keep {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if err := h.client.Events(ctx, id, true, func(Event) {}); err != nil {
		h.t.Fatalf("events of %s: %v", id, err)
	}
	k, err := h.client.Get(ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	if !Terminal(k.State) {
		h.t.Fatalf("keep %s: events ended but state is %s", id, k.State)
	}
	return k
}
