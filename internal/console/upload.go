package console

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
)

// Limits on the small parts of a start request.
const (
	maxConfigSize = 64 << 10
	maxFieldSize  = 256
	// multipartSlack is what the multipart framing may add to a request.
	multipartSlack = 16 << 10
)

// startRequest is a parsed POST /api/runs.
type startRequest struct {
	example  string
	backend  string
	wasm     []byte
	wasmName string
	config   []byte
	cfgName  string
}

// badRequest is a start request refused for what it holds; its message is
// for the page as it is.
type badRequest struct {
	status int
	limit  string
	msg    string
}

func (e *badRequest) Error() string { return e.msg }

func refuse(status int, limit, format string, a ...any) error {
	return &badRequest{status: status, limit: limit, msg: fmt.Sprintf(format, a...)}
}

// readStart reads the multipart form of a start request, part by part,
// each within its limit, without spooling anything to disk.
func (s *Server) readStart(w http.ResponseWriter, r *http.Request) (*startRequest, error) {
	tooBig := refuse(http.StatusRequestEntityTooLarge, "upload", "the module is larger than the upload limit of %s", sizeWords(s.o.MaxUpload))
	if r.ContentLength > s.o.MaxUpload+maxConfigSize+multipartSlack {
		return nil, tooBig
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, refuse(http.StatusBadRequest, "", "the request must be multipart/form-data")
	}
	body := http.MaxBytesReader(w, r.Body, s.o.MaxUpload+maxConfigSize+multipartSlack)
	mr := multipart.NewReader(body, params["boundary"])
	req := &startRequest{}
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, tooBig
			}
			return nil, refuse(http.StatusBadRequest, "", "reading the form: %v", err)
		}
		var limit int64
		switch p.FormName() {
		case "wasm":
			limit = s.o.MaxUpload
		case "config":
			limit = maxConfigSize
		case "example", "backend":
			limit = maxFieldSize
		default:
			return nil, refuse(http.StatusBadRequest, "", "unknown form field %q", p.FormName())
		}
		b, err := io.ReadAll(io.LimitReader(p, limit+1))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return nil, tooBig
			}
			return nil, refuse(http.StatusBadRequest, "", "reading the form field %s: %v", p.FormName(), err)
		}
		if int64(len(b)) > limit {
			switch p.FormName() {
			case "wasm":
				return nil, tooBig
			case "config":
				return nil, refuse(http.StatusRequestEntityTooLarge, "upload", "the config is larger than %s", sizeWords(maxConfigSize))
			}
			return nil, refuse(http.StatusBadRequest, "", "the form field %s is too long", p.FormName())
		}
		switch p.FormName() {
		case "wasm":
			req.wasm, req.wasmName = b, uploadName(p.FileName(), "app.wasm")
		case "config":
			req.config, req.cfgName = b, uploadName(p.FileName(), "Enarx.toml")
		case "example":
			req.example = string(b)
		case "backend":
			req.backend = string(b)
		}
	}
	switch {
	case req.example != "" && req.wasm != nil:
		return nil, refuse(http.StatusBadRequest, "", "choose an example or upload a module, not both")
	case req.example == "" && req.wasm == nil:
		return nil, refuse(http.StatusBadRequest, "", "choose an example or upload a .wasm module")
	case req.example != "" && req.config != nil:
		return nil, refuse(http.StatusBadRequest, "", "a config goes with an uploaded module; the examples bring their own")
	case req.wasm != nil && len(req.wasm) == 0:
		return nil, refuse(http.StatusBadRequest, "", "%s: the file is empty", req.wasmName)
	}
	return req, nil
}

// uploadName makes a browser-supplied file name safe to show and to use as
// the module's name in messages.
func uploadName(name, def string) string {
	name = filepath.Base(strings.ReplaceAll(name, "\\", "/"))
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, name)
	if len(name) > 80 {
		name = name[:80]
	}
	if name == "" || name == "." || name == "/" {
		return def
	}
	return name
}

// checkConfig refuses what a visitor's config may not ask of the host.
func checkConfig(cfg *config.Config, name string) error {
	if cfg.Steward != "" {
		return fmt.Errorf("%s: steward: the console does not contact attestation services; remove the steward line", name)
	}
	// Each instance has its own memory up to the console's limit and its
	// own thread: replicas would multiply what one visitor's keep takes
	// of the host (256 instances, or one per CPU with "auto").
	if cfg.Replicas != 0 && cfg.Replicas != 1 {
		return fmt.Errorf("%s: replicas: the console runs one instance per keep; remove the replicas line", name)
	}
	for _, f := range cfg.Files {
		where := fmt.Sprintf("%s:%d", name, f.Line)
		switch f.Kind {
		case config.KindDir:
			return fmt.Errorf("%s: kind = \"dir\": the console does not lend folders of its host to uploaded workloads", where)
		case config.KindConnect:
			return fmt.Errorf("%s: kind = \"connect\": the console does not let uploaded workloads open outgoing connections", where)
		case config.KindListen:
			ip := net.ParseIP(f.Addr)
			if ip == nil || !ip.IsLoopback() {
				return fmt.Errorf("%s: listen address %q: the console only lets uploaded workloads listen on loopback; set addr = \"127.0.0.1\"", where, f.Addr)
			}
			if f.Port < 1024 {
				return fmt.Errorf("%s: listen port %d: use a port of 1024 or more", where, f.Port)
			}
		}
	}
	return nil
}

// checkTimeout bounds the compile check of an upload.
const checkTimeout = 30 * time.Second

// uploadTimeout bounds how long a start request's body may take to arrive.
const uploadTimeout = 2 * time.Minute

// prepareUpload checks an uploaded module and config and writes them into
// the run's folder, returning the job.
func (s *Server) prepareUpload(req *startRequest, dir string) (Job, int, error) {
	var job Job
	port := 0
	if req.config != nil {
		cfg, err := config.Parse(req.cfgName, req.config)
		if err != nil {
			return job, 0, refuse(http.StatusBadRequest, "", "%v", err)
		}
		if err := checkConfig(cfg, req.cfgName); err != nil {
			return job, 0, refuse(http.StatusBadRequest, "", "%v", err)
		}
		for _, f := range cfg.Files {
			if f.Kind == config.KindListen && port == 0 {
				port = int(f.Port)
			}
		}
		job.Config = filepath.Join(dir, "config.toml")
		if err := os.WriteFile(job.Config, req.config, 0o600); err != nil {
			return job, 0, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	prog, err := s.checked.Get(ctx, "", req.wasmName, fmt.Sprintf("sha256:%x", sha256.Sum256(req.wasm)), req.wasm, false)
	if err != nil {
		return job, 0, refuse(http.StatusBadRequest, "", "%s", oneLine(err.Error()))
	}
	prog.Release()
	job.Wasm = filepath.Join(dir, "app.wasm")
	if err := os.WriteFile(job.Wasm, req.wasm, 0o600); err != nil {
		return job, 0, err
	}
	return job, port, nil
}

// prepareExample builds the example if needed and writes its config.
func (s *Server) prepareExample(ctx context.Context, ex Example, dir string) (Job, int, error) {
	var job Job
	wasm, err := s.builder.wasm(ctx, ex)
	if err != nil {
		return job, 0, refuse(http.StatusServiceUnavailable, "", "this example is unavailable here: %v", err)
	}
	job.Wasm = wasm
	if !ex.Listen {
		return job, 0, nil
	}
	port, err := freePort()
	if err != nil {
		return job, 0, fmt.Errorf("finding a free port: %w", err)
	}
	job.Config = filepath.Join(dir, "config.toml")
	return job, port, os.WriteFile(job.Config, []byte(listenConfig(port)), 0o600)
}

// listenConfig is the HTTP example's config: stdio, and a TCP listener
// named web on a loopback port.
func listenConfig(port int) string {
	return fmt.Sprintf(`# The HTTP example's config, written by the console for this run.
[[files]]
kind = "stdin"

[[files]]
kind = "stdout"

[[files]]
kind = "stderr"

[[files]]
kind = "listen"
name = "web"
prot = "tcp"
addr = "127.0.0.1"
port = %d
`, port)
}

// freePort asks the kernel for a loopback port that is free now. Another
// program could take it before the keep binds it; the keep then fails with
// "address in use" and the page shows that error.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// handleStart is POST /api/runs: check the limits, read and check the
// workload, start the keep.
func (s *Server) handleStart(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, "", "cross-site request refused")
		return
	}
	sess, ok := sessionFrom(r)
	if !ok {
		writeError(w, http.StatusForbidden, "", "no console session cookie: reload the page (cookies must be allowed for this site)")
		return
	}
	rn := &run{id: newRunID(), session: sess, state: "starting", maxOutput: s.o.MaxOutput, timeLimit: s.o.TimeLimit, ended: make(chan struct{})}
	// Limits first, so that a visitor over one does not upload for nothing.
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "", "%v", errClosed)
		return
	case s.bySession[sess] != nil:
		s.mu.Unlock()
		writeError(w, http.StatusConflict, "session", "you already have a keep running: stop it, or wait for it to end, before you start another (one keep per visitor)")
		return
	case s.running >= s.o.MaxKeeps:
		n := s.running
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "keeps", "the console is busy: it already runs as many keeps as it allows (%d); try again in a minute", n)
		return
	}
	s.sweepLocked()
	s.running++
	s.bySession[sess] = rn
	s.mu.Unlock()
	// A slot is held while the upload arrives: a visitor who sends it
	// slowly must not hold it for long.
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(uploadTimeout))

	if err := s.start(w, r, rn); err != nil {
		s.release(rn)
		var br *badRequest
		if errors.As(err, &br) {
			writeError(w, br.status, br.limit, "%s", br.msg)
			return
		}
		s.o.Log("run %s: %v", rn.id, err)
		writeError(w, http.StatusInternalServerError, "", "the keep could not be started: %v", err)
		return
	}
	rn.mu.Lock()
	st := rn.stateLocked()
	rn.mu.Unlock()
	writeJSON(w, http.StatusCreated, st)
}

func (s *Server) start(w http.ResponseWriter, r *http.Request, rn *run) error {
	req, err := s.readStart(w, r)
	if err != nil {
		return err
	}
	if req.backend == "" {
		return refuse(http.StatusBadRequest, "", "choose a backend")
	}
	if ok, why := s.usableBackend(req.backend); !ok {
		return refuse(http.StatusBadRequest, "", "backend %q is not usable here: %s", req.backend, why)
	}
	rn.backend = req.backend
	dir, err := os.MkdirTemp(s.o.TempDir, "castellan-console-")
	if err != nil {
		return err
	}
	rn.dir = dir
	var job Job
	if req.example != "" {
		ex, ok := exampleByID(req.example)
		if !ok {
			os.RemoveAll(dir)
			return refuse(http.StatusBadRequest, "", "unknown example %q", req.example)
		}
		if st, why := s.exampleStatus(ex); st == "unavailable" && ex.Listen {
			os.RemoveAll(dir)
			return refuse(http.StatusServiceUnavailable, "", "this example is unavailable here: %s", why)
		}
		rn.title, rn.example = ex.Title, ex.ID
		job, rn.port, err = s.prepareExample(r.Context(), ex, dir)
	} else {
		rn.title = req.wasmName
		job, rn.port, err = s.prepareUpload(req, dir)
		if s.o.KeepsElsewhere != "" {
			rn.port = 0 // on the remote host's loopback: no link to show
		}
	}
	if err == nil {
		s.mu.Lock()
		if s.closed {
			err = errClosed
		} else {
			s.runs[rn.id] = rn
		}
		s.mu.Unlock()
	}
	if err == nil {
		if err = s.launch(rn, job); err != nil {
			s.mu.Lock()
			delete(s.runs, rn.id)
			s.mu.Unlock()
			close(rn.ended)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return err
	}
	return nil
}
