package host

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/castellan-dev/castellan/internal/connlimit"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/tee"
)

// MaxRequestBody bounds a create request.
const MaxRequestBody = 64 << 10

// Bounds of the API server's connections (Config.ReadTimeout and
// IdleTimeout; the TLS handshake and the request's headers within
// readHeaderTimeout): an anonymous caller cannot keep a connection, and the
// goroutine and buffers behind it, for longer by trickling bytes or by
// sending nothing. maxHeaderBytes bounds a request's headers;
// Config.StreamWriteTimeout an event stream's writes.
const (
	DefaultReadTimeout        = time.Minute
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultStreamWriteTimeout = time.Minute
	readHeaderTimeout         = 10 * time.Second
	maxHeaderBytes            = 16 << 10
)

// RelayProtocol is the Upgrade token of the attach request.
const RelayProtocol = "castellan-relay/1"

// Handler returns the agent's HTTP API (bearer-token authenticated).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/host", a.hostInfo)
	mux.HandleFunc("POST /v1/keeps", a.create)
	mux.HandleFunc("GET /v1/keeps", a.list)
	mux.HandleFunc("GET /v1/keeps/{id}", a.inspect)
	mux.HandleFunc("POST /v1/keeps/{id}/stop", a.stopKeep)
	mux.HandleFunc("DELETE /v1/keeps/{id}", a.removeKeepAPI)
	mux.HandleFunc("GET /v1/keeps/{id}/events", a.events)
	mux.HandleFunc("POST /v1/keeps/{id}/attach", a.attach)
	return a.auth(mux)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, a ...any) {
	writeJSON(w, status, ErrorResponse{Error: fmt.Sprintf(format, a...)})
}

func (a *Agent) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="castellan host"`)
			writeError(w, http.StatusUnauthorized, "no bearer token (create one with 'castellan host token create')")
			return
		}
		if _, ok := a.st.checkToken(r.Context(), strings.TrimSpace(tok)); !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="castellan host", error="invalid_token"`)
			writeError(w, http.StatusUnauthorized, "the bearer token is not valid for this host")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) hostInfo(w http.ResponseWriter, r *http.Request) {
	info := HostInfo{Backends: map[string]string{}, Max: a.cfg.Max, MaxKeeps: a.cfg.MaxKeeps, Enforcement: a.enforcement}
	for _, n := range tee.Names() {
		if err := a.launcher.Available(n); err != nil {
			info.Backends[n] = err.Error()
		} else {
			info.Backends[n] = "available"
		}
	}
	a.mu.Lock()
	info.LiveKeeps = len(a.live)
	a.mu.Unlock()
	writeJSON(w, http.StatusOK, info)
}

// ParseCreateRequest decodes and checks a create request body (strict
// JSON, bounded fields). It does not check the backend or the host's
// maxima.
func ParseCreateRequest(b []byte) (*CreateRequest, error) {
	if len(b) > MaxRequestBody {
		return nil, fmt.Errorf("request: %d bytes, more than %d", len(b), MaxRequestBody)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var req CreateRequest
	if err := dec.Decode(&req); err != nil {
		return nil, fmt.Errorf("request: %v", err)
	}
	if dec.More() {
		return nil, errors.New("request: data after the JSON object")
	}
	if req.Backend == "" {
		return nil, errors.New("request: no backend")
	}
	if len(req.Nonce) == 0 || len(req.Nonce) > evidence.MaxNonceSize {
		return nil, fmt.Errorf("request: nonce of %d bytes, want 1 to %d", len(req.Nonce), evidence.MaxNonceSize)
	}
	if err := evidence.CheckDigest(req.Digest); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if len(req.ClientKey) != sha256.Size {
		return nil, fmt.Errorf("request: client_key of %d bytes, want a SHA-256 (%d)", len(req.ClientKey), sha256.Size)
	}
	if len(req.Name) > 64 {
		return nil, errors.New("request: name is over 64 bytes")
	}
	for _, c := range req.Name {
		if !unicode.IsPrint(c) {
			return nil, fmt.Errorf("request: name %q holds a control character", req.Name)
		}
	}
	return &req, nil
}

// checkLimits fills unset limits with the host's maxima and refuses any
// above them. A VM's size is the exception: unset, it is the default size,
// not the maximum, because a VM's RAM is reserved for its whole life.
func checkLimits(req, max Limits) (Limits, error) {
	out := req
	size := func(n int64) string { return fmt.Sprintf("%d bytes", n) }
	secs := func(n int64) string { return fmt.Sprintf("%ds", n) }
	count := func(n int64) string { return fmt.Sprint(n) }
	for _, f := range []struct {
		name     string
		v        *int64
		max      int64
		def      int64 // 0: the maximum
		vmMin    int64 // the least a VM keep takes (VM size only)
		describe func(int64) string
	}{
		{"memory_bytes", &out.MemoryBytes, max.MemoryBytes, 0, 0, size},
		{"cpu_seconds", &out.CPUSeconds, max.CPUSeconds, 0, 0, secs},
		{"wall_seconds", &out.WallSeconds, max.WallSeconds, 0, 0, secs},
		{"open_files", &out.OpenFiles, max.OpenFiles, 0, 0, count},
		{"vm_memory_bytes", &out.VMMemoryBytes, max.VMMemoryBytes, keep.DefaultVMMemory, keep.MinVMMemory, size},
		{"vcpus", &out.VCPUs, max.VCPUs, keep.DefaultVCPUs, 1, count},
	} {
		switch {
		case *f.v < 0:
			return out, fmt.Errorf("limits: %s is negative", f.name)
		case *f.v == 0 && f.def == 0:
			*f.v = f.max
		case *f.v == 0:
			*f.v = min(f.def, f.max)
		case *f.v > f.max:
			return out, fmt.Errorf("limits: %s of %s is over the host's maximum of %s", f.name, f.describe(*f.v), f.describe(f.max))
		case *f.v < f.vmMin:
			return out, fmt.Errorf("limits: %s of %s is too little for a VM keep (at least %s)", f.name, f.describe(*f.v), f.describe(f.vmMin))
		}
	}
	if out.VMMemoryBytes%(1<<20) != 0 {
		return out, fmt.Errorf("limits: vm_memory_bytes of %d is not a whole number of MiB", out.VMMemoryBytes)
	}
	if out.OpenFiles < 16 {
		return out, fmt.Errorf("limits: open_files of %d is too few for a keep (at least 16)", out.OpenFiles)
	}
	if out.MemoryBytes < 256<<20 {
		return out, fmt.Errorf("limits: memory_bytes of %d is too little for a keep (at least 256MiB)", out.MemoryBytes)
	}
	if err := checkCPURate(out.CPUQuotaMicros, out.CPUPeriodMicros); err != nil {
		return out, err
	}
	return out, nil
}

// Bounds of a process keep's CPU rate, as cgroup v2's cpu.max takes them
// (the kernel's limits on cfs_period_us and its least quota).
const (
	minCPUPeriod = 1000
	maxCPUPeriod = 1000000
	minCPUQuota  = 1000
)

// checkCPURate checks cpu_quota_us and cpu_period_us: both or neither,
// within what cpu.max accepts (the keep would otherwise run uncapped,
// as the kernel refuses the value).
func checkCPURate(quota, period int64) error {
	switch {
	case quota == 0 && period == 0:
		return nil
	case quota < 0 || period < 0:
		return fmt.Errorf("limits: cpu_quota_us and cpu_period_us must not be negative (got %d and %d)", quota, period)
	case quota == 0 || period == 0:
		return fmt.Errorf("limits: cpu_quota_us and cpu_period_us go together (got %d and %d)", quota, period)
	case period < minCPUPeriod || period > maxCPUPeriod:
		return fmt.Errorf("limits: cpu_period_us of %d is not between %d and %d", period, minCPUPeriod, maxCPUPeriod)
	case quota < minCPUQuota:
		return fmt.Errorf("limits: cpu_quota_us of %d is less than %d", quota, minCPUQuota)
	}
	return nil
}

func (a *Agent) create(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBody))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "request: %v", err)
		return
	}
	req, err := ParseCreateRequest(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	b, err := tee.New(req.Backend)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := a.launcher.Available(req.Backend); err != nil {
		writeError(w, http.StatusBadRequest, "backend %s is not available on this host: %v", req.Backend, err)
		return
	}
	lim, err := checkLimits(req.Limits, a.cfg.Max)
	if err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	k, err := a.start(r.Context(), req, b.Platform(), lim)
	if errors.Is(err, errCapacity) {
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusTooManyRequests, "the host runs its maximum of %d keeps", a.cfg.MaxKeeps)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusCreated, k)
}

func (a *Agent) list(w http.ResponseWriter, r *http.Request) {
	rows, err := a.st.keeps(r.Context(), "")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "state database: %v", err)
		return
	}
	out := struct {
		Keeps []Keep `json:"keeps"`
	}{Keeps: []Keep{}}
	for _, k := range rows {
		k.Hello = nil // inspect a keep for its evidence
		out.Keeps = append(out.Keeps, k.Keep)
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) lookup(w http.ResponseWriter, r *http.Request) *keepRow {
	k, err := a.st.keep(r.Context(), r.PathValue("id"))
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, "no keep %q", truncate(r.PathValue("id")))
		return nil
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "state database: %v", err)
		return nil
	}
	return k
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

func (a *Agent) inspect(w http.ResponseWriter, r *http.Request) {
	if k := a.lookup(w, r); k != nil {
		writeJSON(w, http.StatusOK, k.Keep)
	}
}

func (a *Agent) stopKeep(w http.ResponseWriter, r *http.Request) {
	k := a.lookup(w, r)
	if k == nil {
		return
	}
	a.mu.Lock()
	l := a.live[k.ID]
	a.mu.Unlock()
	if l != nil && l.pid != 0 {
		a.stop(l, StateStopped, "stopped through the API")
	}
	if k = a.lookup(w, r); k != nil {
		writeJSON(w, http.StatusOK, k.Keep)
	}
}

func (a *Agent) events(w http.ResponseWriter, r *http.Request) {
	k := a.lookup(w, r)
	if k == nil {
		return
	}
	follow := r.URL.Query().Get("follow") != ""
	var ch chan Event
	if follow {
		var cancel func()
		ch, cancel = a.subscribe(k.ID)
		defer cancel()
	}
	// The stored events go out a page at a time, each page's writes
	// within StreamWriteTimeout: a keep's output lines are events (up to
	// its output limit, 64 MiB by default), so reading them all at once
	// would cost the agent gigabytes per request, and a client that stops
	// reading would hold the handler for ever.
	rc := http.NewResponseController(w)
	evs, err := a.st.events(r.Context(), k.ID, 0, eventPage)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "state database: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	var last int64
	ended := false
	send := func(evs ...Event) bool {
		rc.SetWriteDeadline(time.Now().Add(a.cfg.StreamWriteTimeout))
		var err error
		for _, e := range evs {
			if err = enc.Encode(e); err != nil {
				break
			}
			last = e.Seq
			ended = ended || e.Type == "ended"
		}
		if err == nil {
			err = rc.Flush()
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			a.cfg.Logf("keep %s: dropped an event stream to %s that stopped reading", k.ID, r.RemoteAddr)
		}
		return err == nil
	}
	for {
		if !send(evs...) {
			return
		}
		if len(evs) < eventPage {
			break
		}
		if evs, err = a.st.events(r.Context(), k.ID, last, eventPage); err != nil {
			a.cfg.Logf("keep %s: reading its events: %v", k.ID, err)
			return
		}
	}
	if !follow || ended {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.closing:
			return
		case e := <-ch:
			if e.Seq <= last {
				continue
			}
			if !send(e) || e.Type == "ended" {
				return
			}
		}
	}
}

// eventPage is how many stored events GET /v1/keeps/{id}/events reads at once.
const eventPage = 1000

// attach upgrades the connection and relays raw bytes between the client
// and the keep's socket. The agent sees only the TLS records of the
// client's session with the keep.
func (a *Agent) attach(w http.ResponseWriter, r *http.Request) {
	k := a.lookup(w, r)
	if k == nil {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), RelayProtocol) {
		writeError(w, http.StatusBadRequest, "attach needs Upgrade: %s", RelayProtocol)
		return
	}
	if k.Attached {
		writeError(w, http.StatusConflict, "keep %s already has a client", k.ID)
		return
	}
	if k.State != StateReady {
		writeError(w, http.StatusConflict, "keep %s is %s, not ready for a client", k.ID, k.State)
		return
	}
	var ok bool
	if err := a.write(func() (err error) { ok, err = a.st.setAttached(k.ID); return }); err != nil || !ok {
		writeError(w, http.StatusConflict, "keep %s already has a client", k.ID)
		return
	}
	sock := filepath.Join(a.cfg.StateDir, "keeps", k.ID, keepSocket)
	kc, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		writeError(w, http.StatusBadGateway, "keep %s: %v", k.ID, err)
		return
	}
	rc := http.NewResponseController(w)
	conn, brw, err := rc.Hijack()
	if err != nil {
		kc.Close()
		writeError(w, http.StatusInternalServerError, "attach: %v", err)
		return
	}
	conn.SetDeadline(time.Time{})
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + RelayProtocol + "\r\nConnection: Upgrade\r\n\r\n")
	if err := brw.Flush(); err != nil {
		conn.Close()
		kc.Close()
		return
	}
	a.event(k.ID, "attached", "a client attached; relaying its encrypted session to the keep")
	var gone <-chan struct{}
	a.mu.Lock()
	if l := a.live[k.ID]; l != nil {
		gone = l.exited
	}
	a.mu.Unlock()
	a.relay(k.ID, conn, brw.Reader, kc, gone)
	a.event(k.ID, "detached", "the client's session ended")
}

type closeWriter interface{ CloseWrite() error }

// How long the relay lets what is left drain before it closes both sides:
// after one direction ended, and after the keep's process is gone (what
// it wrote last, and its exit, may still be on their way to a slow
// client).
const (
	relayDrain    = 30 * time.Second
	keepGoneDrain = 2 * time.Minute
)

// relay copies between the client and the keep until one direction ends
// or the keep's process is gone (keepGone closed; nil if not known), then
// lets the rest drain before it closes both: a client that neither reads
// nor closes must not hold the relay (two goroutines, their buffers and two
// descriptors) for ever once its keep has ended.
func (a *Agent) relay(id string, client net.Conn, fromClient io.Reader, keep net.Conn, keepGone <-chan struct{}) {
	done := make(chan struct{}, 2)
	pipe := func(dst net.Conn, src io.Reader, toKeep bool) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if a.cfg.RelayTap != nil {
					a.cfg.RelayTap(id, toKeep, buf[:n])
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(keep, fromClient, true)
	go pipe(client, keep, false)
	finished, wait := 0, relayDrain
	select {
	case <-done:
		finished = 1
	case <-keepGone:
		wait = keepGoneDrain
	}
	// One direction is finished, or the keep is gone; what is left gets a
	// moment to drain, then both are closed (a client that vanished must
	// not pin the keep).
	drain := time.NewTimer(cmp.Or(a.relayDrain, wait))
	defer drain.Stop()
	for finished < 2 {
		select {
		case <-done:
			finished++
			continue
		case <-drain.C:
		case <-a.closing:
		}
		break
	}
	client.Close()
	keep.Close()
}

// Files of the agent's TLS identity in its state folder.
const (
	CertFile = "tls/cert.pem"
	keyFile  = "tls/key.pem"
)

// TLSCertificate loads the agent's self-signed TLS certificate from the
// state folder, creating it on first use. Clients pin it (--host-ca).
func (a *Agent) TLSCertificate() (*tls.Certificate, error) {
	a.certOnce.Do(func() { a.cert, a.certErr = loadOrCreateCert(a.cfg.StateDir) })
	return a.cert, a.certErr
}

func loadOrCreateCert(dir string) (*tls.Certificate, error) {
	cp, kp := filepath.Join(dir, CertFile), filepath.Join(dir, keyFile)
	// A key others can read is no longer the agent's alone; and a new key
	// written over it would keep its mode (os.WriteFile).
	if st, err := os.Stat(kp); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("agent TLS key %s: readable or writable by group or others (mode %v): chmod 600 it, or remove it and the certificate for a new identity", kp, st.Mode().Perm())
	}
	if c, err := tls.LoadX509KeyPair(cp, kp); err == nil {
		return &c, nil
	}
	if err := os.MkdirAll(filepath.Dir(cp), 0o700); err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	hn, _ := os.Hostname()
	tpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "castellan host agent " + hn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(2, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		IsCA:         true, BasicConstraintsValid: true,
	}
	if hn != "" {
		tpl.DNSNames = append(tpl.DNSNames, hn)
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	c, err := tls.LoadX509KeyPair(cp, kp)
	return &c, err
}

// Serve answers the API over TLS on ln until ctx is done. HTTP/2 is off:
// attach hijacks the HTTP/1.1 connection.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	cert, err := a.TLSCertificate()
	if err != nil {
		return fmt.Errorf("agent TLS certificate: %w", err)
	}
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: min(readHeaderTimeout, a.cfg.ReadTimeout),
		ReadTimeout:       a.cfg.ReadTimeout,
		IdleTimeout:       a.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:          log.New(logWriter(a.cfg.Logf), "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if a.cfg.ClientConns > 0 {
		ln = connlimit.Listen(ln, a.cfg.ClientConns, a.cfg.Logf)
	}
	err = srv.ServeTLS(ln, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// logWriter passes the HTTP server's own errors to Logf, without the TLS
// handshake failures of port probes and clients that do not trust the
// certificate.
type logWriter func(format string, a ...any)

func (f logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if !strings.Contains(line, "TLS handshake error") {
		f("%s", line)
	}
	return len(p), nil
}

// CertFingerprint returns the SHA-256 of a PEM certificate file's DER.
func CertFingerprint(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("%s: no PEM certificate", path)
	}
	sum := sha256.Sum256(blk.Bytes)
	return fmt.Sprintf("sha256:%x", sum), nil
}
