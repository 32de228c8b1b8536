package console_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/console"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// remoteAgent is a host agent started on its own, as `castellan host serve`
// would be: its own state folder, a token made for the console, TLS on a
// loopback port, its certificate read from the state folder.
type remoteAgent struct {
	agent  *host.Agent
	url    string
	client *host.Client
}

func startRemoteAgent(t *testing.T) *remoteAgent {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	state, err := os.MkdirTemp("", "cstl-remote-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	tok, err := host.CreateToken(state, "console")
	if err != nil {
		t.Fatal(err)
	}
	a, err := host.New(host.Config{StateDir: state, KeepCommand: []string{exe, "keep"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.TLSCertificate(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		a.Serve(ctx, ln)
	}()
	pem, err := os.ReadFile(filepath.Join(state, host.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in the agent's cert.pem")
	}
	url := "https://" + ln.Addr().String()
	c, err := host.NewClient(url, tok, roots)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.StopKeeps()
		cancel()
		<-served
		c.CloseIdleConnections()
		a.Close()
	})
	return &remoteAgent{agent: a, url: url, client: c}
}

// TestRemoteAgent: a console with --host runs its keeps on a separately
// started agent: the output streams, the proof names that agent, a stop
// goes through the agent's API (its record says stopped), and the example
// that serves on a port is unavailable, since the port would be on the
// agent's machine.
func TestRemoteAgent(t *testing.T) {
	ra := startRemoteAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	runner, backends, err := console.RemoteAgent(ctx, ra.client, ra.url)
	if err != nil {
		t.Fatal(err)
	}
	usable := map[string]bool{}
	for _, b := range backends {
		usable[b.Name] = b.Usable
	}
	if !usable["sim-snp"] || !usable["nil"] || usable["snp"] && !usable["sim-snp"] {
		t.Fatalf("the agent's backends: %+v", backends)
	}
	tc := newConsole(t, console.Options{Runner: runner, Backends: func() []tee.Status { return backends },
		KeepsElsewhere: "the host agent at " + ra.url, MaxKeeps: 2})
	v := newVisitor(t, tc)

	st := v.mustStart(field("example", "hello-go"), field("backend", "sim-snp"))
	o := v.follow(st.ID, nil)
	if !strings.Contains(o.stdout, "Hello, world, from a Castellan keep!") || !strings.Contains(o.stderr, "This line went to standard error.") {
		t.Errorf("stdout %q stderr %q", o.stdout, o.stderr)
	}
	if o.exit.Code != 0 || o.exit.Reason != "exited" {
		t.Errorf("exit = %+v", o.exit)
	}
	hello, err := tc.ExamplePath(ctx, "hello-go")
	if err != nil {
		t.Fatal(err)
	}
	if o.proof == nil {
		t.Fatalf("no proof: %s", o.proofErr)
	}
	if p := o.proof; p.WorkloadDigest != digestOf(t, hello, nil) || !p.Evidence.Verified || p.Platform != "snp" ||
		!strings.Contains(p.Delivery, "the host agent at "+ra.url) || p.PlatformName != "AMD SEV-SNP, simulated on the host agent's machine" {
		t.Errorf("proof = %+v", p)
	}

	// Stop: through the agent, whose record of the keep says so.
	st = v.mustStart(field("example", "ticker-go"), field("backend", "nil"))
	stopped := false
	o = v.follow(st.ID, func(ev sseEvent, o *outcome) bool {
		if !stopped && strings.Contains(o.stdout, "tick 1\n") {
			stopped = true
			v.stop(st.ID)
		}
		return true
	})
	if o.exit.Reason != "stopped" || o.exit.Message != "Stopped by you." {
		t.Errorf("exit = %+v", o.exit)
	}
	keeps, err := ra.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]int{}
	for _, k := range keeps {
		states[k.State]++
	}
	if len(keeps) != 2 || states[host.StateExited] != 1 || states[host.StateStopped] != 1 {
		t.Errorf("the agent's keeps: %v", states)
	}

	var info console.Info
	v.getJSON("/api/info", &info)
	for _, ex := range info.Examples {
		if ex.ID == "http-go" && (ex.State != "unavailable" || !strings.Contains(ex.Reason, "loopback")) {
			t.Errorf("http-go with a remote agent: %s %q", ex.State, ex.Reason)
		}
	}
	if code, _, e := v.start(field("example", "http-go"), field("backend", "nil")); code != http.StatusServiceUnavailable || !strings.Contains(e.Error, "this example is unavailable here") {
		t.Errorf("http-go with a remote agent: %d %q", code, e.Error)
	}
}

// TestRefusedEvidence: evidence that does not chain to the roots the
// console trusts is refused before anything is sent; the page says which
// check failed and the agent stops the keep.
func TestRefusedEvidence(t *testing.T) {
	// Another machine's simulation root: not the one the keeps sign with.
	foreign, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	tc := newConsole(t, console.Options{SimRoots: func() ([]*x509.Certificate, error) { return foreign.Roots(), nil }})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "hello-go"), field("backend", "sim-snp"))
	o := v.follow(st.ID, nil)
	if o.exit.Reason != "failed" || !strings.Contains(o.exit.Message, "keep evidence refused") || o.stdout != "" {
		t.Errorf("exit %+v stdout %q", o.exit, o.stdout)
	}
	if o.proof != nil || !strings.Contains(o.proofErr, "keep evidence refused") {
		t.Errorf("proof %+v error %q", o.proof, o.proofErr)
	}
}

// TestDirect: `castellan console --direct` runs keeps as child `castellan
// run` processes; the proof then comes from the keep's report, with the
// keep's self-signed certificate. The time limit that must not stop hello
// is generous (a loaded machine compiles slowly); the one that stops the
// never-ending ticker is short, in a console of its own.
func TestDirect(t *testing.T) {
	tc := newConsole(t, console.Options{Runner: directRunner(t), TimeLimit: 2 * time.Minute})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "hello-go"), field("backend", "sim-snp"))
	o := v.follow(st.ID, nil)
	if o.exit.Code != 0 || !strings.Contains(o.stdout, "Hello, world") {
		t.Errorf("exit %+v stdout %q", o.exit, o.stdout)
	}
	if o.proof == nil {
		t.Fatalf("no proof: %s", o.proofErr)
	}
	p := o.proof
	if !p.Evidence.Verified || !p.Certificate.Present || !p.Certificate.SelfSigned || !p.Certificate.ValidNow || p.Delivery != "" {
		t.Errorf("proof = %+v", p)
	}
	short := newVisitor(t, newConsole(t, console.Options{Runner: directRunner(t), TimeLimit: 2 * time.Second}))
	st = short.mustStart(field("example", "ticker-go"), field("backend", "nil"))
	if o := short.follow(st.ID, nil); o.exit.Code != 124 || o.exit.Reason != "time-limit" {
		t.Errorf("exit = %+v", o.exit)
	}
}

// TestStopAtOnce: a keep stopped as soon as it is started (most often
// while the agent is still creating it) ends as stopped, and the visitor
// can start the next one at once.
func TestStopAtOnce(t *testing.T) {
	tc := newConsole(t, console.Options{MaxKeeps: 1})
	v := newVisitor(t, tc)
	for range 2 {
		st := v.mustStart(field("example", "ticker-go"), field("backend", "sim-snp"))
		if code := v.stop(st.ID); code != http.StatusAccepted {
			t.Fatalf("stop: %d", code)
		}
		if o := v.follow(st.ID, nil); o.exit.Reason != "stopped" || o.exit.Message != "Stopped by you." {
			t.Errorf("exit = %+v", o.exit)
		}
	}
	st := v.mustStart(field("example", "hello-go"), field("backend", "nil"))
	if o := v.follow(st.ID, nil); o.exit.Code != 0 {
		t.Errorf("after the stops: %+v", o.exit)
	}
}
