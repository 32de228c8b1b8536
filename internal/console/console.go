// Package console is `castellan console`: a web page on which anyone can
// try a keep with zero set-up. A visitor picks a built-in example or
// uploads a .wasm module and a config, picks a backend, and runs it for a
// limited time; stdout and stderr stream live to the page, and the page
// shows the keep's certificate and evidence decoded and checked, in words a
// newcomer understands.
//
// The page's assets are embedded (web/), so the console works offline. The
// API behind it is JSON plus one Server-Sent Events stream per run:
//
//	GET  /api/info               examples, backends, limits, the visitor's running keep
//	POST /api/runs               start a keep (multipart: example or wasm [+ config], backend)
//	GET  /api/runs/{id}          a run's state
//	GET  /api/runs/{id}/events   its events: state, stdout, stderr, proof, listen, exit, end
//	POST /api/runs/{id}/stop     stop it
//
// Keeps are started through a Runner. By default the console starts a host
// agent in its own process (a temporary state folder, a token it makes for
// itself, TLS on a loopback port) and runs every keep through it with
// AgentRunner: the console is the deploying client of confidential
// delivery, verifies each keep's evidence before it sends the workload over
// TLS pinned to the attested key, and reads the output back on that
// channel. AgentRunner works the same against a remote agent (`--host`).
// ProcessRunner (`--direct`) starts each keep as a child
// `castellan run --report FILE` process instead. Either way a keep is a
// process of its own, so one that misbehaves cannot take the console down. Visitors are told
// apart by a session cookie: one running keep per session, a global cap on
// running keeps, and a cap on upload size. Uploaded configs may not name
// host folders, outgoing connections, an attestation service, a listen
// address other than loopback, or replicas: the console is for trying
// workloads, not for lending the host.
package console

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/packages"
	"github.com/castellan-dev/castellan/internal/runtime"
	"github.com/castellan-dev/castellan/internal/tee"
)

//go:embed web
var webFS embed.FS

// Defaults of the console's limits.
const (
	DefaultTimeLimit = 60 * time.Second
	DefaultMaxOutput = 1 << 20
	DefaultMaxUpload = 16 << 20
	DefaultMaxKeeps  = 4
	DefaultMaxMemory = 256 << 20
	// A start request's body may take longer (uploadTimeout): its handler
	// extends its own deadline.
	DefaultReadTimeout = 30 * time.Second
	DefaultIdleTimeout = 2 * time.Minute
)

// Bounds of HTTPServer's requests besides Options.ReadTimeout.
const (
	readHeaderTimeout = 10 * time.Second
	maxHeaderBytes    = 64 << 10
)

// Options configure a Server. Zero values take the defaults.
type Options struct {
	TimeLimit time.Duration // wall time of each keep
	MaxOutput int64         // stdout and stderr together, per keep
	MaxUpload int64         // size of an uploaded module
	MaxKeeps  int           // keeps running at once, all visitors together
	MaxMemory int64         // linear memory of each keep

	// Runner starts keeps; nil = an AgentRunner on a host agent that New
	// starts in this process (and Close stops).
	Runner Runner
	// AgentStateDir is the state folder of that agent; "" = a temporary
	// folder, removed by Close.
	AgentStateDir string
	// KeepCommand is that agent's keep process; nil = this executable
	// with the argument "keep".
	KeepCommand []string
	// KeepsElsewhere, when the runner's keeps run on another machine (a
	// remote host agent), names it: a keep's loopback port cannot be
	// reached from the console's visitors, so the examples that serve are
	// unavailable.
	KeepsElsewhere string
	// ExamplesDir is where built examples are cached; "" = the user's
	// cache folder.
	ExamplesDir string
	// CacheDir is the compilation cache used to check uploads; "" = none.
	CacheDir string
	// TempDir holds each run's files; "" = os.TempDir().
	TempDir string
	// Backends lists the backends and whether they are usable; nil = tee.Info.
	Backends func() []tee.Status
	// SimRoots returns the simulation roots the console trusts when it
	// checks simulated evidence; nil = tee.SimRoots, the local ones.
	SimRoots func() ([]*x509.Certificate, error)
	// Log receives one line per notable event (may be nil).
	Log func(format string, a ...any)
	// ReadTimeout bounds reading a request, body included, from its first
	// byte; IdleTimeout bounds a kept-alive connection's wait for its next
	// request (HTTPServer). 0 = DefaultReadTimeout, DefaultIdleTimeout.
	ReadTimeout time.Duration
	IdleTimeout time.Duration
	// AllowedHosts are the names, besides the address a request arrived
	// on, that a request's Host header may carry: "NAME" with any port,
	// "NAME:PORT" with that port only. Any other Host is refused before
	// anything else runs (DNS rebinding); see allowedHost.
	AllowedHosts []string
}

// Server is the console: an http.Handler plus the keeps it runs.
type Server struct {
	o       Options
	builder *builder
	mux     *http.ServeMux
	agent   *LocalAgent // the agent New started, if any
	// checked holds the compiled programs of checked uploads, so that
	// the same module uploaded again is not compiled again to be checked.
	checked *runtime.Programs

	mu        sync.Mutex
	runs      map[string]*run
	bySession map[string]*run // the session's running keep
	running   int
	closed    bool
}

// The bounds of the checked programs kept in memory: compiled code is a
// few times its module's size.
const (
	checkedPrograms = 8
	checkedBytes    = 32 << 20
)

// consoleWarmKeeps keep processes of the console's own agent wait started
// ahead, so that a visitor's run does not wait for a process start.
const consoleWarmKeeps = 1

// New returns a console with the given options.
func New(o Options) (*Server, error) {
	if o.TimeLimit <= 0 {
		o.TimeLimit = DefaultTimeLimit
	}
	if o.MaxOutput <= 0 {
		o.MaxOutput = DefaultMaxOutput
	}
	if o.MaxUpload <= 0 {
		o.MaxUpload = DefaultMaxUpload
	}
	if o.MaxKeeps <= 0 {
		o.MaxKeeps = DefaultMaxKeeps
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = DefaultMaxMemory
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = DefaultReadTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.ExamplesDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("examples cache folder: %w", err)
		}
		o.ExamplesDir = filepath.Join(base, "castellan", "console-examples")
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Backends == nil {
		o.Backends = tee.Info
	}
	if o.SimRoots == nil {
		o.SimRoots = func() ([]*x509.Certificate, error) {
			roots, _, err := tee.SimRoots()
			return roots, err
		}
	}
	if o.Log == nil {
		o.Log = func(string, ...any) {}
	} else {
		// Log lines carry what visitors' workloads and agents say (a
		// keep's last error line, an upload's name): escaped, it cannot
		// draw on the operator's terminal or forge a line.
		logf := o.Log
		o.Log = func(format string, a ...any) { logf("%s", packages.Printable(fmt.Sprintf(format, a...))) }
	}
	var la *LocalAgent
	if o.Runner == nil {
		var err error
		logf := o.Log
		// The console's cap is the binding one; the agent's is a backstop
		// with room for keeps abandoned while being created, which the
		// agent is still stopping when the console has freed their slots.
		la, err = StartLocalAgent(LocalAgentOptions{StateDir: o.AgentStateDir, MaxKeeps: 2 * o.MaxKeeps,
			Max: KeepLimits(o.TimeLimit, o.MaxMemory), KeepCommand: o.KeepCommand, KeepCacheDir: o.CacheDir,
			WarmKeeps: consoleWarmKeeps, Logf: func(f string, a ...any) { logf("host agent: "+f, a...) }})
		if err != nil {
			return nil, fmt.Errorf("starting the host agent: %w", err)
		}
		o.Runner = la.Runner()
		o.Log("host agent in this process on %s (state %s)", la.URL, la.StateDir())
	}
	s := &Server{
		o:         o,
		builder:   newBuilder(o.ExamplesDir),
		agent:     la,
		checked:   &runtime.Programs{MaxPrograms: checkedPrograms, MaxBytes: checkedBytes, CacheDir: o.CacheDir},
		runs:      map[string]*run{},
		bySession: map[string]*run{},
	}
	s.routes()
	return s, nil
}

// HTTPServer returns an http.Server for s with the console's connection
// bounds: anonymous visitors cannot hold a connection (and the goroutine
// and buffers behind it) by sending headers or a body slowly, or by sending
// nothing. A request read whole is no longer bound by ReadTimeout (net/http
// lifts the deadline), so event streams last as long as their run.
func (s *Server) HTTPServer() *http.Server {
	return &http.Server{
		Handler:           s,
		ReadHeaderTimeout: min(readHeaderTimeout, s.o.ReadTimeout),
		ReadTimeout:       s.o.ReadTimeout,
		IdleTimeout:       s.o.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
}

// ServeHTTP serves the page and the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !allowedHost(r, s.o.AllowedHosts) {
		s.o.Log("refused a request for host %q from %s", r.Host, r.RemoteAddr)
		writeError(w, http.StatusMisdirectedRequest, "", "host %q is not a name of this console (castellan console --allowed-host NAME adds one)", r.Host)
		return
	}
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	s.mux.ServeHTTP(w, r)
}

// WarmUp compiles the examples that are not built yet, one after the other,
// so that a visitor's first run does not wait for a compiler.
func (s *Server) WarmUp(ctx context.Context) {
	for _, ex := range Examples {
		if st, _ := s.builder.status(ex); st != "not-built" {
			continue
		}
		if _, err := s.builder.wasm(ctx, ex); err != nil {
			s.o.Log("%v", err)
		}
	}
}

// ExamplePath returns the module file of the example called id, compiling
// it first if needed.
func (s *Server) ExamplePath(ctx context.Context, id string) (string, error) {
	ex, ok := exampleByID(id)
	if !ok {
		return "", fmt.Errorf("unknown example %q", id)
	}
	return s.builder.wasm(ctx, ex)
}

// Close stops every running keep and waits for them to end.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	var rs []*run
	for _, r := range s.runs {
		rs = append(rs, r)
	}
	s.mu.Unlock()
	for _, r := range rs {
		r.stop("The console shut down.")
	}
	for _, r := range rs {
		<-r.ended
	}
	s.checked.Close()
	if s.agent != nil {
		s.agent.Close()
	}
}

func (s *Server) routes() {
	s.mux = http.NewServeMux()
	static, _ := fs.Sub(webFS, "web")
	files := http.FileServerFS(static)
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s.session(w, r)
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, static, "index.html")
	})
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", files))
	s.mux.HandleFunc("GET /api/info", s.handleInfo)
	s.mux.HandleFunc("POST /api/runs", s.handleStart)
	s.mux.HandleFunc("GET /api/runs/{id}", s.handleRun)
	s.mux.HandleFunc("GET /api/runs/{id}/events", s.handleEvents)
	s.mux.HandleFunc("POST /api/runs/{id}/stop", s.handleStop)
}

// sessionCookie names the cookie that tells visitors apart.
const sessionCookie = "castellan_session"

// session returns the visitor's session ID, giving them one if they have
// none. The ID is only a handle for the per-visitor limit and for who may
// see and stop a run; it grants nothing else.
func (s *Server) session(w http.ResponseWriter, r *http.Request) string {
	if id, ok := sessionFrom(r); ok {
		return id
	}
	var b [16]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return id
}

func sessionFrom(r *http.Request) (string, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil || len(c.Value) != 32 {
		return "", false
	}
	if _, err := hex.DecodeString(c.Value); err != nil {
		return "", false
	}
	return c.Value, true
}

// apiError is the body of every failed API call.
type apiError struct {
	Error string `json:"error"`
	// Limit names the limit that was hit: "session", "keeps", "upload".
	Limit string `json:"limit,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, limit, format string, a ...any) {
	writeJSON(w, status, apiError{Error: fmt.Sprintf(format, a...), Limit: limit})
}

// sameOrigin refuses requests a page on another site made the browser
// send: the session cookie is SameSite=Strict already; this also covers
// browsers that ignore it.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		return o == "http://"+r.Host || o == "https://"+r.Host
	}
	return true
}

// Info is the body of GET /api/info.
type Info struct {
	Examples       []ExampleInfo `json:"examples"`
	Backends       []BackendInfo `json:"backends"`
	DefaultBackend string        `json:"default_backend"`
	Limits         Limits        `json:"limits"`
	// Run is the visitor's running keep, if any, so that a reloaded page
	// can follow it again.
	Run string `json:"run,omitempty"`
	// Keeps says where and how keeps run, for the page.
	Keeps string `json:"keeps"`
}

// ExampleInfo is an example and whether it can run here.
type ExampleInfo struct {
	Example
	State  string `json:"state"` // ready, not-built, building, unavailable
	Reason string `json:"reason,omitempty"`
}

// BackendInfo is a backend as the page offers it.
type BackendInfo struct {
	tee.Status
	Label       string `json:"label"`
	Description string `json:"description"`
}

// Limits are the console's limits, for the page to state.
type Limits struct {
	TimeLimitMS int64 `json:"time_limit_ms"`
	MaxOutput   int64 `json:"max_output"`
	MaxUpload   int64 `json:"max_upload"`
	MaxKeeps    int   `json:"max_keeps"`
	Running     int   `json:"running"`
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	sess := s.session(w, r)
	info := Info{}
	for _, ex := range Examples {
		st, reason := s.exampleStatus(ex)
		info.Examples = append(info.Examples, ExampleInfo{Example: ex, State: st, Reason: reason})
	}
	info.Backends, info.DefaultBackend = s.backends()
	info.Keeps = s.keepsWhere()
	s.mu.Lock()
	info.Limits = Limits{TimeLimitMS: s.o.TimeLimit.Milliseconds(), MaxOutput: s.o.MaxOutput, MaxUpload: s.o.MaxUpload, MaxKeeps: s.o.MaxKeeps, Running: s.running}
	if rn := s.bySession[sess]; rn != nil {
		info.Run = rn.id
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

// backendWords are the page's label and description of each backend.
var backendWords = map[string]struct{ label, description string }{
	tee.NameNil: {"nil: no TEE (insecure)",
		"An ordinary process. Nothing protects the keep from this machine; there is no hardware evidence."},
	tee.NameSimSNP: {"sim-snp: simulated AMD SEV-SNP (insecure)",
		"A real-format SEV-SNP report signed by a test key on this machine: every check runs, nothing is protected."},
	tee.NameSimTDX: {"sim-tdx: simulated Intel TDX (insecure)",
		"A real-format TDX quote signed by a test key on this machine: every check runs, nothing is protected."},
	tee.NameSimSGX: {"sim-sgx: simulated Intel SGX enclave (insecure)",
		"A real-format SGX DCAP quote signed by a test key on this machine: every check runs, nothing is protected."},
	tee.NameSimCCA: {"sim-cca: simulated Arm CCA realm (insecure)",
		"A real-format Arm CCA attestation token signed by test keys on this machine: every check runs, nothing is protected."},
	tee.NameSGX: {"sgx: Intel SGX enclave (Gramine)",
		"Castellan runs inside an SGX enclave; Intel's key signs the quote of its measurement."},
	tee.NameCCA: {"cca: Arm CCA realm",
		"The keep runs in a realm the hypervisor cannot read; the platform's attestation key signs the evidence."},
	tee.NameSNP: {"snp: AMD SEV-SNP confidential VM",
		"The keep's memory is encrypted by the CPU; AMD's key signs the evidence."},
	tee.NameTDX: {"tdx: Intel TDX confidential VM",
		"The keep's memory is encrypted by the CPU; Intel's key signs the evidence."},
}

// backends returns the backends with words for the page, and the one to
// preselect: a real TEE when there is one, else the SNP simulation, whose
// evidence shows every check.
func (s *Server) backends() ([]BackendInfo, string) {
	var out []BackendInfo
	def := ""
	for _, st := range s.o.Backends() {
		b := BackendInfo{Status: st, Label: st.Name}
		if w, ok := backendWords[st.Name]; ok {
			b.Label, b.Description = w.label, w.description
		}
		if st.Usable && def == "" {
			def = st.Name // Names order: real TEEs, then sim-snp, other simulations, nil
		}
		out = append(out, b)
	}
	return out, def
}

func (s *Server) usableBackend(name string) (bool, string) {
	for _, st := range s.o.Backends() {
		if st.Name == name {
			return st.Usable, st.Reason
		}
	}
	return false, "unknown backend"
}

// keepsWhere says where and how the runner runs keeps.
func (s *Server) keepsWhere() string {
	switch r := s.o.Runner.(type) {
	case *AgentRunner:
		return "Keeps run through " + r.Where + ". The console is their client: it checks each keep's evidence, then sends it the workload confidentially (TLS 1.3 to the keep, pinned to the attested key) and streams the output back."
	case *ProcessRunner:
		return "Keeps run as child processes of this console (direct mode: no host agent, no confidential delivery)."
	}
	return "Keeps run through a custom runner."
}

// exampleStatus is an example's state for the page: an example that serves
// on a port is unavailable when the keeps run elsewhere.
func (s *Server) exampleStatus(ex Example) (string, string) {
	if ex.Listen && s.o.KeepsElsewhere != "" {
		return "unavailable", "the keeps run on " + s.o.KeepsElsewhere + ": the port this example serves on is on that machine's loopback, which this page cannot reach"
	}
	return s.builder.status(ex)
}

var errClosed = errors.New("the console is shutting down")
