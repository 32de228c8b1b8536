package console_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/cli"
	"github.com/castellan-dev/castellan/internal/console"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/workload"
)

// keepEnv makes the test binary act as castellan when a console test starts
// it as a keep.
const keepEnv = "CASTELLAN_CONSOLE_TEST_KEEP"

func TestMain(m *testing.M) {
	if os.Getenv(keepEnv) == "1" && !fuzzWorker() {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	// Every process this test binary starts acts as castellan: the keeps
	// of the consoles' host agents ("keep ...") and of ProcessRunner.
	os.Setenv(keepEnv, "1")
	// The simulation CA of this test run, shared by the console (which
	// checks evidence) and its keeps (which sign it).
	dir, err := os.MkdirTemp("", "castellan-console-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("CASTELLAN_CONFIG_DIR", filepath.Join(dir, "config"))
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// fuzzWorker reports whether this process is a worker of `go test -fuzz`
// (which inherits the environment, keepEnv included).
func fuzzWorker() bool {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			return true
		}
	}
	return false
}

// directRunner starts keeps as child `castellan run` processes (this test
// binary acting as castellan), as `castellan console --direct` does.
func directRunner(t testing.TB) console.Runner {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return &console.ProcessRunner{Executable: exe, Env: append(os.Environ(), keepEnv+"=1")}
}

type testConsole struct {
	*console.Server
	URL string
}

func newConsole(t testing.TB, o console.Options) *testConsole {
	t.Helper()
	// No runner: the console starts its own host agent, whose keeps are
	// this test binary acting as castellan ("keep").
	if o.TempDir == "" {
		o.TempDir = t.TempDir()
	}
	if o.TimeLimit == 0 {
		// A hang-catcher, not the product's default: a keep that should
		// end by itself must not be stopped on a loaded machine.
		o.TimeLimit = 2 * time.Minute
	}
	o.Log = t.Logf
	s, err := console.New(o)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	return &testConsole{Server: s, URL: hs.URL}
}

// visitor is one browser: a client with its own cookie jar.
type visitor struct {
	t    testing.TB
	c    *http.Client
	base string
}

func newVisitor(t testing.TB, tc *testConsole) *visitor {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	v := &visitor{t: t, c: &http.Client{Jar: jar}, base: tc.URL}
	var info console.Info
	if code := v.getJSON("/api/info", &info); code != http.StatusOK {
		t.Fatalf("GET /api/info: %d", code)
	}
	return v
}

func (v *visitor) getJSON(path string, out any) int {
	v.t.Helper()
	resp, err := v.c.Get(v.base + path)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		v.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode
}

// part is one field of a start request.
type part struct {
	name, filename string
	data           []byte
}

func field(name, value string) part          { return part{name: name, data: []byte(value)} }
func file(name, fn string, data []byte) part { return part{name: name, filename: fn, data: data} }

func multipartBody(t testing.TB, parts ...part) (*bytes.Buffer, string) {
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for _, p := range parts {
		var w io.Writer
		var err error
		if p.filename != "" {
			w, err = mw.CreateFormFile(p.name, p.filename)
		} else {
			w, err = mw.CreateFormField(p.name)
		}
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return &b, mw.FormDataContentType()
}

// start posts a start request and returns the status and the decoded body
// (a RunState on success, an error otherwise).
func (v *visitor) start(parts ...part) (int, console.RunState, apiErr) {
	v.t.Helper()
	body, ct := multipartBody(v.t, parts...)
	req, _ := http.NewRequest("POST", v.base+"/api/runs", body)
	req.Header.Set("Content-Type", ct)
	return v.do(req)
}

type apiErr struct {
	Error string `json:"error"`
	Limit string `json:"limit"`
}

func (v *visitor) do(req *http.Request) (int, console.RunState, apiErr) {
	v.t.Helper()
	resp, err := v.c.Do(req)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st console.RunState
	var e apiErr
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(b, &st); err != nil {
			v.t.Fatalf("%s: %v: %s", req.URL, err, b)
		}
	} else if err := json.Unmarshal(b, &e); err != nil {
		v.t.Fatalf("%s: %d: %v: %s", req.URL, resp.StatusCode, err, b)
	}
	return resp.StatusCode, st, e
}

func (v *visitor) mustStart(parts ...part) console.RunState {
	v.t.Helper()
	code, st, e := v.start(parts...)
	if code != http.StatusCreated {
		v.t.Fatalf("start: %d %s", code, e.Error)
	}
	return st
}

func (v *visitor) stop(id string) int {
	v.t.Helper()
	req, _ := http.NewRequest("POST", v.base+"/api/runs/"+id+"/stop", nil)
	code, _, _ := v.do(req)
	return code
}

type sseEvent struct {
	id, name string
	data     []byte
}

// events reads a run's event stream from after lastID, calling each(ev)
// for every event until "end" or until each returns false.
func (v *visitor) events(id, lastID string, each func(sseEvent) bool) {
	v.t.Helper()
	req, _ := http.NewRequest("GET", v.base+"/api/runs/"+id+"/events", nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := v.c.Do(req)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("events of %s: %d", id, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		v.t.Fatalf("events of %s: content type %q", id, ct)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 4<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.name == "" {
				continue
			}
			if !each(ev) || ev.name == "end" {
				return
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.name = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = []byte(line[6:])
		}
	}
	v.t.Fatalf("events of %s: stream ended without an end event: %v", id, sc.Err())
}

// outcome is everything a run streamed.
type outcome struct {
	stdout, stderr string
	proof          *console.Proof
	proofErr       string
	exit           console.ExitInfo
	listen         map[string]any
	names          []string
}

// follow reads a run's events to the end; onEvent may act on the run
// while it streams (return false to stop reading early).
func (v *visitor) follow(id string, onEvent func(sseEvent, *outcome) bool) *outcome {
	v.t.Helper()
	o := &outcome{}
	v.events(id, "", func(ev sseEvent) bool {
		o.names = append(o.names, ev.name)
		switch ev.name {
		case "stdout", "stderr":
			var s string
			if err := json.Unmarshal(ev.data, &s); err != nil {
				v.t.Fatalf("%s event: %v", ev.name, err)
			}
			if ev.name == "stdout" {
				o.stdout += s
			} else {
				o.stderr += s
			}
		case "proof":
			var m map[string]any
			json.Unmarshal(ev.data, &m)
			if e, ok := m["error"].(string); ok {
				o.proofErr = e
			} else {
				o.proof = &console.Proof{}
				if err := json.Unmarshal(ev.data, o.proof); err != nil {
					v.t.Fatalf("proof event: %v", err)
				}
			}
		case "listen":
			json.Unmarshal(ev.data, &o.listen)
		case "exit":
			if err := json.Unmarshal(ev.data, &o.exit); err != nil {
				v.t.Fatalf("exit event: %v", err)
			}
		}
		if onEvent != nil {
			return onEvent(ev, o)
		}
		return true
	})
	return o
}

func digestOf(t testing.TB, wasmPath string, config []byte) string {
	t.Helper()
	b, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	art, err := workload.New(b, config)
	if err != nil {
		t.Fatal(err)
	}
	return art.Digest.String()
}

func TestInfo(t *testing.T) {
	tc := newConsole(t, console.Options{TimeLimit: 7 * time.Second, MaxKeeps: 3, MaxUpload: 1 << 20})
	v := newVisitor(t, tc)
	var info console.Info
	v.getJSON("/api/info", &info)
	if info.Limits.TimeLimitMS != 7000 || info.Limits.MaxKeeps != 3 || info.Limits.MaxUpload != 1<<20 || info.Limits.Running != 0 {
		t.Errorf("limits = %+v", info.Limits)
	}
	ids := map[string]bool{}
	for _, ex := range info.Examples {
		ids[ex.ID] = true
		if ex.State == "" || (ex.State != "ready" && ex.Reason == "") {
			t.Errorf("example %s: state %q reason %q", ex.ID, ex.State, ex.Reason)
		}
	}
	for _, want := range []string{"hello-go", "fib-c", "fib-go", "http-go", "ticker-go"} {
		if !ids[want] {
			t.Errorf("example %s missing", want)
		}
	}
	usable := map[string]bool{}
	for _, b := range info.Backends {
		usable[b.Name] = b.Usable
		if b.Label == "" || b.Description == "" {
			t.Errorf("backend %s has no words for the page", b.Name)
		}
	}
	if !usable["nil"] || !usable["sim-snp"] {
		t.Errorf("nil and sim-snp should be usable: %v", usable)
	}
	if !usable[info.DefaultBackend] {
		t.Errorf("default backend %q is not usable", info.DefaultBackend)
	}
}

func TestPageAndAssets(t *testing.T) {
	tc := newConsole(t, console.Options{})
	for path, want := range map[string]string{"/": "text/html", "/static/app.js": "javascript", "/static/style.css": "text/css"} {
		resp, err := http.Get(tc.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), want) || len(b) == 0 {
			t.Errorf("GET %s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: CSP %q", path, csp)
		}
		// Works offline: the page loads nothing from elsewhere.
		if bytes.Contains(b, []byte("http://")) || bytes.Contains(b, []byte("https://")) {
			t.Errorf("GET %s: refers to another site", path)
		}
	}
}

// TestRunExampleStreams runs the Go hello example on the simulated SNP
// backend and checks the stream: state, output on the right stream, the
// proof with the digest of the module that ran, and a clean exit.
func TestRunExampleStreams(t *testing.T) {
	tc := newConsole(t, console.Options{})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "hello-go"), field("backend", "sim-snp"))
	if st.State != "running" || st.DeadlineMS == 0 || st.ID == "" {
		t.Fatalf("start: %+v", st)
	}
	o := v.follow(st.ID, nil)
	if !strings.Contains(o.stdout, "Hello, world, from a Castellan keep!") || strings.Contains(o.stdout, "standard error") {
		t.Errorf("stdout = %q", o.stdout)
	}
	if !strings.Contains(o.stderr, "This line went to standard error.") {
		t.Errorf("stderr = %q", o.stderr)
	}
	if o.exit.Code != 0 || o.exit.Reason != "exited" {
		t.Errorf("exit = %+v", o.exit)
	}
	if o.proof == nil {
		t.Fatalf("no proof: %s", o.proofErr)
	}
	p := o.proof
	if !p.Evidence.Present || !p.Evidence.Verified || p.Platform != "snp" || !p.Simulated || !p.Insecure || p.Measurement == "" || len(p.TCB) == 0 {
		t.Errorf("proof = %+v", p)
	}
	// Delivered through the console's own host agent: the console checked
	// the evidence against its own fresh nonce before it sent the module,
	// and pinned the attested key; no service issued a certificate.
	if p.Certificate.Present || p.Attested || p.KeyFingerprint == "" || len(p.Nonce) != 64 ||
		!strings.Contains(p.Delivery, "the host agent in this process") || !strings.Contains(p.VerifiedBy, "simulation root") {
		t.Errorf("proof = %+v", p)
	}
	var info console.Info
	v.getJSON("/api/info", &info)
	for _, ex := range info.Examples {
		if ex.ID == "hello-go" && ex.State != "ready" {
			t.Errorf("hello-go after a run: %s", ex.State)
		}
	}
	if info.Run != "" || info.Limits.Running != 0 {
		t.Errorf("after the run: run %q, %d running", info.Run, info.Limits.Running)
	}
	// The state endpoint agrees with the stream.
	var rs console.RunState
	v.getJSON("/api/runs/"+st.ID, &rs)
	if rs.State != "ended" || rs.Exit == nil || rs.Proof == nil || rs.Proof.WorkloadDigest != p.WorkloadDigest {
		t.Errorf("run state = %+v", rs)
	}
	// The stream opens with the server's clock, which has no id.
	if o.names[0] != "clock" {
		t.Errorf("stream starts with %v", o.names)
	}
	// A reconnecting browser gets exactly what it missed: here, everything
	// after the first state event.
	var full, after []string
	v.events(st.ID, "", func(ev sseEvent) bool {
		full = append(full, fmt.Sprintf("%s %s %s", ev.id, ev.name, ev.data))
		return true
	})
	v.events(st.ID, "1", func(ev sseEvent) bool {
		after = append(after, fmt.Sprintf("%s %s %s", ev.id, ev.name, ev.data))
		return true
	})
	if len(full) < 3 || !strings.HasPrefix(full[1], "1 state ") || !strings.HasPrefix(after[0], " clock ") ||
		strings.Join(after[1:], "\n") != strings.Join(full[2:], "\n") {
		t.Errorf("after Last-Event-ID 1:\n%s\nwhole stream:\n%s", strings.Join(after, "\n"), strings.Join(full, "\n"))
	}
}

// TestUploadDigest uploads a fixture with a config on the nil backend: the
// proof names the digest of exactly those bytes and says there is no
// hardware evidence.
func TestUploadDigest(t *testing.T) {
	tc := newConsole(t, console.Options{})
	v := newVisitor(t, tc)
	wasm := fixtures.Go(t, "hello")
	b, _ := os.ReadFile(wasm)
	cfg := []byte("args = [\"one\", \"two\"]\n[env]\nGREETING = \"hi\"\n")
	st := v.mustStart(field("backend", "nil"), file("wasm", "hello.wasm", b), file("config", "app.toml", cfg))
	if st.Title != "hello.wasm" {
		t.Errorf("title %q", st.Title)
	}
	o := v.follow(st.ID, nil)
	if o.exit.Code != 0 {
		t.Errorf("exit = %+v, stderr %q", o.exit, o.stderr)
	}
	if o.proof == nil {
		t.Fatalf("no proof: %s", o.proofErr)
	}
	if want := digestOf(t, wasm, cfg); o.proof.WorkloadDigest != want {
		t.Errorf("digest %s, want %s", o.proof.WorkloadDigest, want)
	}
	if o.proof.Platform != "none" || !o.proof.Insecure || o.proof.Evidence.Present || o.proof.Measurement != "" {
		t.Errorf("nil proof = %+v", o.proof)
	}
}

func TestBadUploads(t *testing.T) {
	good, err := os.ReadFile(fixtures.Go(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	const maxUpload = 4 << 20
	if len(good) >= maxUpload {
		t.Fatalf("the hello fixture is %d bytes, over the test's upload limit", len(good))
	}
	tc := newConsole(t, console.Options{MaxUpload: maxUpload})
	v := newVisitor(t, tc)
	wasmHeader := []byte("\x00asm\x01\x00\x00\x00")
	cases := []struct {
		name   string
		parts  []part
		status int
		want   string
		limit  string
	}{
		{"not wasm", []part{field("backend", "nil"), file("wasm", "notes.txt", []byte("hello, I am text"))}, 400, "notes.txt: not a WebAssembly module (bad magic number)", ""},
		{"component", []part{field("backend", "nil"), file("wasm", "c.wasm", []byte("\x00asm\x0d\x00\x01\x00"))}, 400, "components are not supported", ""},
		{"truncated", []part{field("backend", "nil"), file("wasm", "cut.wasm", good[:200])}, 400, "cut.wasm: truncated or malformed module", ""},
		{"no start", []part{field("backend", "nil"), file("wasm", "lib.wasm", wasmHeader)}, 400, "no _start function", ""},
		{"empty", []part{field("backend", "nil"), file("wasm", "e.wasm", nil)}, 400, "e.wasm: the file is empty", ""},
		{"too large", []part{field("backend", "nil"), file("wasm", "big.wasm", make([]byte, maxUpload+1))}, 413, "larger than the upload limit of 4 MiB", "upload"},
		{"config too large", []part{field("backend", "nil"), file("wasm", "a.wasm", wasmHeader), file("config", "big.toml", bytes.Repeat([]byte("#"), 65<<10))}, 413, "config is larger than 64 KiB", "upload"},
		{"bad toml", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("args = [\n"))}, 400, "app.toml:", ""},
		{"host folder", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("[[files]]\nkind = \"dir\"\nname = \"/etc\"\npath = \"/etc\"\n"))}, 400, "app.toml:1: kind = \"dir\": the console does not lend folders", ""},
		{"connect", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("[[files]]\nkind = \"connect\"\nhost = \"example.com\"\nprot = \"tcp\"\n"))}, 400, "does not let uploaded workloads open outgoing connections", ""},
		{"listen on all", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = \"tcp\"\nport = 8080\n"))}, 400, "only lets uploaded workloads listen on loopback", ""},
		{"steward", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("steward = \"https://attest.example\"\n"))}, 400, "does not contact attestation services", ""},
		{"replicas", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("replicas = 256\n"))}, 400, "app.toml: replicas: the console runs one instance per keep", ""},
		{"replicas auto", []part{field("backend", "nil"), file("wasm", "a.wasm", good), file("config", "app.toml", []byte("replicas = \"auto\"\n"))}, 400, "app.toml: replicas: the console runs one instance per keep", ""},
		{"both", []part{field("backend", "nil"), field("example", "hello-go"), file("wasm", "a.wasm", good)}, 400, "not both", ""},
		{"neither", []part{field("backend", "nil")}, 400, "choose an example or upload", ""},
		{"example with config", []part{field("backend", "nil"), field("example", "hello-go"), file("config", "app.toml", []byte("args = []\n"))}, 400, "the examples bring their own", ""},
		{"unknown example", []part{field("backend", "nil"), field("example", "../../etc/passwd")}, 400, "unknown example", ""},
		{"no backend", []part{field("example", "hello-go")}, 400, "choose a backend", ""},
		{"unknown backend", []part{field("backend", "kvm"), field("example", "hello-go")}, 400, "backend \"kvm\" is not usable here", ""},
		{"unusable backend", []part{field("backend", "snp"), field("example", "hello-go")}, 400, "backend \"snp\" is not usable here", ""},
		{"unknown field", []part{field("backend", "nil"), field("memory", "4GiB")}, 400, "unknown form field \"memory\"", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, e := v.start(c.parts...)
			if code != c.status || !strings.Contains(e.Error, c.want) || e.Limit != c.limit {
				t.Errorf("got %d %q (limit %q), want %d containing %q (limit %q)", code, e.Error, e.Limit, c.status, c.want, c.limit)
			}
		})
	}
	// Not multipart at all.
	req, _ := http.NewRequest("POST", tc.URL+"/api/runs", strings.NewReader(`{"example":"hello-go"}`))
	req.Header.Set("Content-Type", "application/json")
	if code, _, e := v.do(req); code != 400 || !strings.Contains(e.Error, "multipart/form-data") {
		t.Errorf("JSON body: %d %q", code, e.Error)
	}
	// A declared length over the limit is refused before the body is read.
	req, _ = http.NewRequest("POST", tc.URL+"/api/runs", io.LimitReader(zeros{}, maxUpload+1<<20))
	req.ContentLength = maxUpload + 1<<20
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	if code, _, e := v.do(req); code != 413 || e.Limit != "upload" {
		t.Errorf("oversized body: %d %q", code, e.Error)
	}
	// Every refusal gave its slot back.
	var info console.Info
	v.getJSON("/api/info", &info)
	if info.Limits.Running != 0 || info.Run != "" {
		t.Errorf("after refusals: %d running, run %q", info.Limits.Running, info.Run)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestLimitsAndStop: one keep per visitor, a global cap, a run seen and
// stopped only by its visitor, and the slot given back once it ends.
func TestLimitsAndStop(t *testing.T) {
	tc := newConsole(t, console.Options{MaxKeeps: 1})
	alice, mallory := newVisitor(t, tc), newVisitor(t, tc)
	st := alice.mustStart(field("example", "ticker-go"), field("backend", "nil"))

	code, _, e := alice.start(field("example", "hello-go"), field("backend", "nil"))
	if code != http.StatusConflict || e.Limit != "session" || !strings.Contains(e.Error, "you already have a keep running") {
		t.Errorf("second keep of one visitor: %d %+v", code, e)
	}
	code, _, e = mallory.start(field("example", "hello-go"), field("backend", "nil"))
	if code != http.StatusServiceUnavailable || e.Limit != "keeps" || !strings.Contains(e.Error, "as many keeps as it allows (1)") {
		t.Errorf("over the global cap: %d %+v", code, e)
	}
	// Another visitor can neither stop nor read Alice's run.
	if code := mallory.stop(st.ID); code != http.StatusNotFound {
		t.Errorf("mallory stops alice's run: %d", code)
	}
	var rs console.RunState
	if code := mallory.getJSON("/api/runs/"+st.ID+"/events", &rs); code != http.StatusNotFound {
		t.Errorf("mallory reads alice's events: %d", code)
	}
	var info console.Info
	alice.getJSON("/api/info", &info)
	if info.Run != st.ID || info.Limits.Running != 1 {
		t.Errorf("alice's info: run %q, %d running", info.Run, info.Limits.Running)
	}

	stopped := false
	o := alice.follow(st.ID, func(ev sseEvent, o *outcome) bool {
		if !stopped && strings.Contains(o.stdout, "tick 1\n") {
			stopped = true
			if code := alice.stop(st.ID); code != http.StatusAccepted {
				t.Errorf("stop: %d", code)
			}
		}
		return true
	})
	if !stopped {
		t.Fatalf("the ticker never ticked: stdout %q stderr %q", o.stdout, o.stderr)
	}
	if o.exit.Reason != "stopped" || o.exit.Message != "Stopped by you." {
		t.Errorf("exit = %+v", o.exit)
	}
	// The slot is free again, for either visitor.
	st2 := mallory.mustStart(field("example", "hello-go"), field("backend", "nil"))
	if o := mallory.follow(st2.ID, nil); o.exit.Code != 0 {
		t.Errorf("after the stop: %+v", o.exit)
	}
}

func TestTimeLimit(t *testing.T) {
	tc := newConsole(t, console.Options{TimeLimit: 2 * time.Second})
	v := newVisitor(t, tc)
	// The deadline is set after the request left: at least 2 s after
	// before, and at most 2 s after the reply's now (however slow the
	// machine).
	before := time.Now().UnixMilli()
	st := v.mustStart(field("example", "ticker-go"), field("backend", "nil"))
	if st.TimeLimitMS != 2000 || st.DeadlineMS-st.NowMS > 2000 || st.DeadlineMS < before+2000 {
		t.Errorf("deadline: %+v", st)
	}
	o := v.follow(st.ID, nil)
	if o.exit.Code != 124 || o.exit.Reason != "time-limit" || !strings.Contains(o.exit.Message, "time limit of 2s") {
		t.Errorf("exit = %+v, stderr %q", o.exit, o.stderr)
	}
}

func TestOutputLimit(t *testing.T) {
	tc := newConsole(t, console.Options{MaxOutput: 100})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "fib-go"), field("backend", "nil"))
	o := v.follow(st.ID, nil)
	if o.exit.Code != 125 || o.exit.Reason != "output-limit" || !strings.Contains(o.exit.Message, "output limit of 100 bytes") {
		t.Errorf("exit = %+v, stderr %q", o.exit, o.stderr)
	}
	if len(o.stdout) > 100 || !strings.HasPrefix(o.stdout, "fib(0) = 0\n") {
		t.Errorf("stdout (%d bytes) = %q", len(o.stdout), o.stdout)
	}
}

// TestFibC runs the C example, compiled from source with clang.
func TestFibC(t *testing.T) {
	fixtures.C(t, "hello") // skips without clang and wasi-libc, unless CI is set
	tc := newConsole(t, console.Options{})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "fib-c"), field("backend", "sim-tdx"))
	o := v.follow(st.ID, nil)
	if o.exit.Code != 0 || !strings.Contains(o.stdout, "fib(93) = 12200160415121876738\n") || !strings.Contains(o.stderr, "computed in C") {
		t.Errorf("exit %+v stdout %q stderr %q", o.exit, o.stdout, o.stderr)
	}
	if o.proof == nil || o.proof.Platform != "tdx" || !o.proof.Evidence.Verified {
		t.Errorf("proof %+v %s", o.proof, o.proofErr)
	}
}

// TestHTTPExample starts the HTTP server example, reaches it on the port
// the console gave it, sees the request in the keep's output, and stops it.
func TestHTTPExample(t *testing.T) {
	tc := newConsole(t, console.Options{})
	v := newVisitor(t, tc)
	st := v.mustStart(field("example", "http-go"), field("backend", "nil"))
	if !strings.HasPrefix(st.URL, "http://127.0.0.1:") {
		t.Fatalf("url %q", st.URL)
	}
	var body string
	stopped := false
	o := v.follow(st.ID, func(ev sseEvent, o *outcome) bool {
		if ev.name == "listen" {
			resp, err := http.Get(st.URL + "castellan")
			if err != nil {
				t.Errorf("GET %s: %v", st.URL, err)
			} else {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(b)
			}
		}
		if !stopped && strings.Contains(o.stdout, "request 1: GET /castellan") {
			stopped = true
			v.stop(st.ID)
		}
		return true
	})
	if o.listen["url"] != st.URL || o.listen["ready"] != true {
		t.Errorf("listen event %v", o.listen)
	}
	if !strings.Contains(body, "Hello from a Castellan keep! You asked for /castellan") {
		t.Errorf("body %q", body)
	}
	if o.exit.Reason != "stopped" {
		t.Errorf("exit %+v; stdout %q stderr %q", o.exit, o.stdout, o.stderr)
	}
}

// TestRequestForgery: a page on another site cannot make a visitor's
// browser start or stop keeps, and a request without the session cookie
// starts nothing.
func TestRequestForgery(t *testing.T) {
	tc := newConsole(t, console.Options{})
	v := newVisitor(t, tc)
	for _, h := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Sec-Fetch-Site": "cross-site"},
		{"Sec-Fetch-Site": "same-site", "Origin": "http://evil." + strings.TrimPrefix(tc.URL, "http://")},
	} {
		body, ct := multipartBody(t, field("example", "hello-go"), field("backend", "nil"))
		req, _ := http.NewRequest("POST", tc.URL+"/api/runs", body)
		req.Header.Set("Content-Type", ct)
		for k, val := range h {
			req.Header.Set(k, val)
		}
		if code, _, e := v.do(req); code != http.StatusForbidden || !strings.Contains(e.Error, "cross-site") {
			t.Errorf("start with %v: %d %q", h, code, e.Error)
		}
		req, _ = http.NewRequest("POST", tc.URL+"/api/runs/0123/stop", nil)
		for k, val := range h {
			req.Header.Set(k, val)
		}
		if code, _, _ := v.do(req); code != http.StatusForbidden {
			t.Errorf("stop with %v: %d", h, code)
		}
	}
	body, ct := multipartBody(t, field("example", "hello-go"), field("backend", "nil"))
	req, _ := http.NewRequest("POST", tc.URL+"/api/runs", body)
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Cookie", "castellan_session=not-hex")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("start without a session: %d", resp.StatusCode)
	}
}

// TestExampleWithoutToolchain: on a machine without the compilers, the page
// says which examples are unavailable and why, and starting one says so.
func TestExampleWithoutToolchain(t *testing.T) {
	hello, err := os.ReadFile(fixtures.Go(t, "hello")) // built while go is on the PATH
	if err != nil {
		t.Fatal(err)
	}
	tc := newConsole(t, console.Options{ExamplesDir: t.TempDir()})
	t.Setenv("PATH", t.TempDir())
	v := newVisitor(t, tc)
	var info console.Info
	v.getJSON("/api/info", &info)
	for _, ex := range info.Examples {
		tool := map[string]string{"Go": "go", "C": "clang"}[ex.Language]
		if ex.State != "unavailable" || !strings.Contains(ex.Reason, tool+" is not installed") {
			t.Errorf("%s: %s %q", ex.ID, ex.State, ex.Reason)
		}
	}
	code, _, e := v.start(field("example", "hello-go"), field("backend", "nil"))
	if code != http.StatusServiceUnavailable || !strings.Contains(e.Error, "this example is unavailable here") || !strings.Contains(e.Error, "needs the Go toolchain") {
		t.Errorf("start: %d %q", code, e.Error)
	}
	// Uploads still work without compilers.
	st := v.mustStart(field("backend", "nil"), file("wasm", "hello.wasm", hello))
	if o := v.follow(st.ID, nil); o.exit.Code != 0 {
		t.Errorf("upload without compilers: %+v", o.exit)
	}
}

// TestDNSRebinding: a page on evil.example whose name resolves to the
// console's address sends requests that are same-origin for the browser
// (matching Origin, Sec-Fetch-Site same-origin) but carry its own name in
// Host. Every route refuses them before anything runs: nothing starts, no
// run is seen, stopped or streamed, not even the page is served; the
// console's own address, localhost and --allowed-host names still work.
func TestDNSRebinding(t *testing.T) {
	hello, err := os.ReadFile(fixtures.Go(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	tc := newConsole(t, console.Options{Runner: directRunner(t), AllowedHosts: []string{"try.example"}})
	v := newVisitor(t, tc)
	st := v.mustStart(field("backend", "nil"), file("wasm", "hello.wasm", hello))
	_, port, _ := strings.Cut(strings.TrimPrefix(tc.URL, "http://"), ":")
	evil := "evil.example:" + port
	for _, c := range []struct{ method, path string }{
		{"GET", "/"},
		{"GET", "/static/app.js"},
		{"GET", "/api/info"},
		{"POST", "/api/runs"},
		{"GET", "/api/runs/" + st.ID},
		{"GET", "/api/runs/" + st.ID + "/events"},
		{"POST", "/api/runs/" + st.ID + "/stop"},
	} {
		var body io.Reader
		ct := ""
		if c.path == "/api/runs" {
			body, ct = multipartBody(t, field("backend", "nil"), file("wasm", "hello.wasm", hello))
		}
		req, _ := http.NewRequest(c.method, tc.URL+c.path, body)
		req.Host = evil
		req.Header.Set("Origin", "http://"+evil)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := v.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMisdirectedRequest || !strings.Contains(string(b), `host \"evil.example:`+port+`\" is not a name of this console`) {
			t.Errorf("%s %s with Host %s: %d %s", c.method, c.path, evil, resp.StatusCode, b)
		}
	}
	var info console.Info
	v.getJSON("/api/info", &info)
	if info.Limits.Running > 1 {
		t.Errorf("%d keeps running after the refused start", info.Limits.Running)
	}
	if o := v.follow(st.ID, nil); o.exit.Reason == "stopped" {
		t.Errorf("the refused stop stopped the run: %+v", o.exit)
	}
	for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "try.example", "try.example:" + port} {
		req, _ := http.NewRequest("GET", tc.URL+"/api/info", nil)
		req.Host = host
		resp, err := v.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("Host %s: %d", host, resp.StatusCode)
		}
	}
}
