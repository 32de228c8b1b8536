package delivery

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/kbs"
	"github.com/castellan-dev/castellan/internal/runtime"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// Keep is the keep's side of one delivery: its key, its evidence and the
// digest it attested to.
type Keep struct {
	key       *ecdsa.PrivateKey
	spki      []byte
	digest    string
	clientKey []byte // SHA-256 of the client's SPKI, as the create request named it
	cert      tls.Certificate
	tee       tee.Backend // fetches [secrets.kbs] with fresh evidence
	Hello     Hello
}

// NewKeep makes the keep's fresh key, evidence over (key, nonce, digest)
// from backend b, and a CSR. clientKey is the SHA-256 of the public key
// (SPKI) the delivering client will present in TLS; only that client may
// deliver.
func NewKeep(ctx context.Context, b tee.Backend, nonce []byte, digest string, clientKey []byte) (*Keep, error) {
	if len(clientKey) != sha256.Size {
		return nil, fmt.Errorf("client key hash is %d bytes, want %d", len(clientKey), sha256.Size)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("keep key: %w", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("keep key: %w", err)
	}
	env, err := tee.Attest(ctx, b, spki, nonce, digest)
	if err != nil {
		return nil, err
	}
	evb, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "castellan keep"}}, key)
	if err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	cert, err := selfSigned(key, "castellan keep (delivery)")
	if err != nil {
		return nil, err
	}
	return &Keep{key: key, spki: spki, digest: digest, clientKey: bytes.Clone(clientKey), cert: *cert, tee: b,
		Hello: Hello{Evidence: evb, CSR: csr}}, nil
}

// SPKI returns the keep's public key, SPKI DER.
func (k *Keep) SPKI() []byte { return bytes.Clone(k.spki) }

// selfSigned makes a certificate for key; the peer pins the key, not the
// certificate.
func selfSigned(key *ecdsa.PrivateKey, cn string) (*tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(48 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// ServeOptions are how the keep process runs a delivered workload.
type ServeOptions struct {
	// CacheDir is the compilation cache; "" keeps compiled code in memory
	// only. A cache on the host's disk lets the host read and change
	// compiled code, so only insecure (nil backend) keeps should use one.
	CacheDir string
	// Engine runs the workload ("" = the default; see runtime.Options).
	Engine string
	// Programs, if set, supplies the compiled program (see
	// runtime.Options.Programs): a keep that compiled its package's module
	// ahead (runtime.Programs.Preload) does not compile it again.
	Programs *runtime.Programs
	// HandshakeTimeout bounds the TLS handshake and the reading of the
	// package; 0 means one minute.
	HandshakeTimeout time.Duration
	// Log receives the keep's notices for the host (never workload data).
	Log func(format string, a ...any)
	// HostOutput receives a detached workload's output when the package's
	// config says detached_output = "host" (the host can read it).
	HostOutput io.Writer
	// Detached is called when the client hung up on a detached workload;
	// Abort when it hung up on an attached one (the caller ends the
	// workload, e.g. by exiting the keep process). Nil Abort: the workload
	// runs on with its output discarded.
	Detached func()
	Abort    func(reason string)
	// Started, if set, is called once the package checked out, before the
	// workload starts.
	Started func()
	// Volumes are dir entries of host folders the host gives the workload
	// (keep.Volume, checked by keep.CheckVolumes), preopened after the
	// config's descriptors. They come from whoever started the keep,
	// never from the client.
	Volumes []config.File
	// SecretService is where the keep fetches its config's [secrets.kbs]
	// (checked by its Check); nil: nowhere, and such a config is refused.
	SecretService *SecretService
}

func (o *ServeOptions) logf(format string, a ...any) {
	if o.Log != nil {
		o.Log(format, a...)
	}
}

// ErrRefused wraps the reasons the keep refused a delivery.
var ErrRefused = errors.New("delivery refused")

// Serve runs one delivery on conn (the relayed byte stream): TLS with the
// keep's key, the client's manifest and package, the digest check, then
// the workload with its output framed back to the client. It returns the
// workload's result, or an error when nothing ran.
func (k *Keep) Serve(ctx context.Context, conn net.Conn, o ServeOptions) (*Result, error) {
	timeout := o.HandshakeTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	tc := tls.Server(conn, &tls.Config{
		Certificates: []tls.Certificate{k.cert},
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{ALPN},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no client certificate")
			}
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			if subtle.ConstantTimeCompare(sum[:], k.clientKey) != 1 {
				return errors.New("the client's key is not the one named when the keep was created")
			}
			return nil
		},
	})
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls handshake with the client: %w", err)
	}
	if tc.ConnectionState().NegotiatedProtocol != ALPN {
		return nil, fmt.Errorf("tls handshake with the client: protocol %q, want %s", tc.ConnectionState().NegotiatedProtocol, ALPN)
	}
	w := &frameWriter{w: tc}
	refuse := func(err error) (*Result, error) {
		w.write(FrameError, refusal(err))
		return nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	m, art, err := k.receive(tc)
	if err != nil {
		if errors.Is(err, ErrRefused) {
			w.write(FrameError, refusal(err))
		}
		return nil, err
	}
	var cfg *config.Config
	if art.Config != nil {
		if cfg, err = config.Parse("package config", art.Config); err != nil {
			return refuse(err)
		}
		for _, f := range cfg.Files {
			if f.Kind == config.KindDir {
				return refuse(fmt.Errorf("the config maps host folder %s (as %s): host folders are outside the keep and not confidential", f.Path, f.Name))
			}
		}
	}
	// The host's volumes are checked before anything is fetched.
	preopens, err := volumePreopens(o.Volumes, cfg)
	if err != nil {
		return refuse(err)
	}
	// Secrets the config fetches by kbs:/// reference come from the
	// secret service, after the keep attested to it; the client supplies
	// the others.
	secrets := m.Secrets
	if cfg != nil && len(cfg.SecretRefs) > 0 {
		if err := cfg.CheckSecrets(slices.Collect(maps.Keys(m.Secrets))); err != nil {
			return refuse(err)
		}
		tc.SetDeadline(time.Now().Add(timeout + secretFetchTimeout))
		fetched, err := k.fetchSecrets(ctx, o.SecretService, cfg, art.Digest.String(), o)
		if err != nil {
			return refuse(err)
		}
		secrets = maps.Clone(m.Secrets)
		if secrets == nil {
			secrets = map[string]string{}
		}
		maps.Copy(secrets, fetched)
	}
	// Secret files go into cfg's entries (memory only); secret
	// environment values into env.
	env, err := cfg.BindSecrets(secrets)
	if err != nil {
		return refuse(err)
	}
	hostOutput := m.Detach && cfg != nil && cfg.DetachedOutput == config.DetachedHost
	var cert *tls.Certificate
	if len(m.CertChain) > 0 {
		if cert, err = k.chain(m.CertChain); err != nil {
			return refuse(err)
		}
	}
	tc.SetDeadline(time.Time{})
	started, _ := json.Marshal(Started{Digest: art.Digest.String()})
	if err := w.write(FrameStarted, started); err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	o.logf("package %s received and checked; workload starting", art.Digest)
	if o.Started != nil {
		o.Started()
	}

	stdout := &streamWriter{fw: w, typ: FrameStdout}
	stderr := &streamWriter{fw: w, typ: FrameStderr}
	var clientGone sync.Once
	gone := func() {
		clientGone.Do(func() {
			if m.Detach {
				stdout.redirect(o.HostOutput, hostOutput)
				stderr.redirect(o.HostOutput, hostOutput)
				if o.Detached != nil {
					o.Detached()
				}
				return
			}
			stdout.redirect(nil, false)
			stderr.redirect(nil, false)
			if o.Abort != nil {
				o.Abort("the client disconnected")
			}
		})
	}
	stdout.onFail, stderr.onFail = gone, gone
	// The config's max_output counts stdout and stderr together, as
	// castellan run counts them: past it the client gets the exit status
	// 125 with the reason, and the workload is stopped.
	var limited atomic.Bool
	if cfg != nil && cfg.Limits.MaxOutput > 0 {
		b := &outputBudget{left: cfg.Limits.MaxOutput}
		b.onLimit = func() {
			reason := fmt.Sprintf("output limit of %d bytes reached", cfg.Limits.MaxOutput)
			limited.Store(true)
			rb, _ := json.Marshal(Result{ExitCode: ExitMaxOutput, Reason: reason})
			if w.write(FrameExit, rb) == nil {
				tc.CloseWrite()
			}
			stdout.redirect(nil, false)
			stderr.redirect(nil, false)
			if o.Abort != nil {
				o.Abort(reason)
			}
		}
		stdout.budget, stderr.budget = b, b
	}
	if m.Detach {
		// A detached client returns once it read Started: the output
		// never goes to it.
		stdout.redirect(o.HostOutput, hostOutput)
		stderr.redirect(o.HostOutput, hostOutput)
		if hostOutput {
			o.logf("detached workload: its output goes to the host (the config says detached_output = \"host\")")
		} else {
			o.logf("detached workload: its output is discarded (the config does not say detached_output = \"host\")")
		}
	}
	// The client sends nothing after the package; a read returning means
	// it hung up.
	go func() {
		io.Copy(io.Discard, tc)
		gone()
	}()
	code, err := runtime.Run(ctx, runtime.Options{
		Name:         "main.wasm",
		Wasm:         art.Wasm,
		Config:       cfg,
		ConfigDir:    "/nonexistent",
		Args:         m.Args,
		Env:          env,
		Preopens:     preopens,
		Stdin:        bytes.NewReader(nil),
		Stdout:       stdout,
		Stderr:       stderr,
		CacheDir:     o.CacheDir,
		Engine:       o.Engine,
		Programs:     o.Programs,
		Package:      art.Digest.String(),
		ModuleDigest: art.WasmDesc.Digest.String(),
		Certificate:  cert,
		Log: func(f string, a ...any) {
			// Runtime notices may name workload data (a listen address);
			// they go to the client only, outside the output budget.
			stderr.write([]byte(fmt.Sprintf("castellan: "+f+"\n", a...)))
		},
	})
	clientGone.Do(func() {}) // the workload is over: a hang-up now changes nothing
	if limited.Load() {
		// The client has its exit frame (without Abort, as in tests, the
		// workload ran on with its output dropped).
		return &Result{ExitCode: ExitMaxOutput, Reason: "output limit reached"}, nil
	}
	res := &Result{ExitCode: code}
	if err != nil {
		res = &Result{ExitCode: 1, Reason: err.Error()}
	}
	rb, _ := json.Marshal(res)
	if w.write(FrameExit, rb) == nil {
		// Let the client read the exit frame before the close.
		tc.CloseWrite()
	}
	return res, nil
}

// maxRefusal bounds the reason in an error frame, as the client reads it:
// a refusal can quote text of any length that the keep did not write (a
// secret service's error detail, a host path), and a reason over MaxFrame
// would not be sent at all.
const maxRefusal = 1024

// refusal is the payload of the error frame for err: its text, cut to
// maxRefusal bytes on a UTF-8 boundary.
func refusal(err error) []byte {
	b := []byte(err.Error())
	if len(b) <= maxRefusal {
		return b
	}
	n := maxRefusal - len("...")
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return append(b[:n:n], "..."...)
}

// volumePreopens checks the host's volumes against the config: each
// host path a folder (the runtime then confines the workload's paths to it
// with os.Root), no guest path also a descriptor name of the config.
func volumePreopens(vs []config.File, cfg *config.Config) ([]config.File, error) {
	names := map[string]bool{}
	if cfg != nil {
		for _, f := range cfg.Files {
			names[f.Name] = true
		}
	}
	for _, v := range vs {
		if names[v.Name] {
			return nil, fmt.Errorf("volume %s: the config already names a descriptor %s", v.Name, v.Name)
		}
		st, err := os.Stat(v.Path)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("volume %s: host path %s is not a folder", v.Name, v.Path)
		}
	}
	return vs, nil
}

// secretFetchTimeout bounds the keep's attestation to the secret service
// and its fetches.
const secretFetchTimeout = time.Minute

// fetchSecrets attests to the secret service over the KBS protocol, with
// a fresh key bound into new evidence with the service's challenge and the
// digest of the package the keep received and checked, and fetches the
// values cfg's [secrets.kbs] names, each encrypted to that key.
func (k *Keep) fetchSecrets(ctx context.Context, svc *SecretService, cfg *config.Config, digest string, o ServeOptions) (map[string]string, error) {
	if svc == nil {
		return nil, errors.New("the config fetches secrets by kbs:/// reference ([secrets.kbs]) and this keep was started with no attestation service to fetch them from (a delivered keep does not fetch them: run it through the containerd shim, or castellan run --attest)")
	}
	if cfg.Steward != "" && strings.TrimSuffix(svc.URL, "/") != strings.TrimSuffix(cfg.Steward, "/") {
		return nil, fmt.Errorf("the keep's secret service is %s, the config's steward is %s: the keep fetches its secrets from the steward only", svc.URL, cfg.Steward)
	}
	roots, err := secretServiceRoots(svc, cfg, o)
	if err != nil {
		return nil, err
	}
	if k.tee == nil || k.tee.Name() == tee.NameNil {
		return nil, kbs.ErrNoEvidence
	}
	hc := kbs.HTTPClient(roots, secretFetchTimeout, svc.Dial)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, secretFetchTimeout)
	defer cancel()
	vals, err := kbs.NewKeepClient(svc.URL, hc, k.tee, digest).FetchAll(ctx, cfg.SecretRefs, MaxSecretSize)
	if err != nil {
		return nil, err
	}
	o.logf("fetched %d secrets from %s after attestation (%s)", len(vals), svc.URL, k.tee.Platform())
	return vals, nil
}

// secretServiceRoots are the TLS roots the keep trusts for the secret
// service. The host names them with the service (nil: the system's), so
// a host could stand up a service of its own and answer with values of its
// choosing (it cannot learn the real ones, which are encrypted to the
// keep's attested key). A config's steward_ca closes that: of the host's
// roots, the keep trusts only the certificate it pins, and fetches nothing
// when the host gave no such certificate.
func secretServiceRoots(svc *SecretService, cfg *config.Config, o ServeOptions) (*x509.CertPool, error) {
	var certs []*x509.Certificate
	for rest := svc.RootsPEM; len(rest) > 0; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("secret service roots: %w", err)
		}
		certs = append(certs, c)
	}
	if len(svc.RootsPEM) > 0 && len(certs) == 0 {
		return nil, errors.New("secret service: no PEM certificate in its roots")
	}
	if cfg.StewardCA == "" {
		o.logf("the config pins no steward_ca: the keep trusts the host's TLS roots for the secret service (certificates: %d; none = the system's)", len(certs))
		if len(certs) == 0 {
			return nil, nil
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		return pool, nil
	}
	for _, c := range certs {
		if sum := sha256.Sum256(c.Raw); "sha256:"+hex.EncodeToString(sum[:]) == cfg.StewardCA {
			pool := x509.NewCertPool()
			pool.AddCert(c)
			return pool, nil
		}
	}
	return nil, fmt.Errorf("the host's TLS roots for the secret service (certificates: %d) do not include the config's steward_ca %s: the keep fetches nothing from a service it cannot authenticate", len(certs), cfg.StewardCA)
}

// receive reads the manifest and package and checks the digest.
func (k *Keep) receive(r io.Reader) (*Manifest, *workload.Artifact, error) {
	typ, b, err := ReadFrame(r, MaxManifest)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the manifest: %w", unexpected(err))
	}
	if typ != FrameManifest {
		return nil, nil, fmt.Errorf("%w: first frame is type %d, want the manifest", ErrRefused, typ)
	}
	m, err := ParseManifest(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if m.Digest != k.digest {
		return nil, nil, fmt.Errorf("%w: the manifest names package %s, the keep attested to %s", ErrRefused, m.Digest, k.digest)
	}
	wasm, wasmSum, err := readBlob(r, FrameWasm, m.WasmSize, "module")
	if err != nil {
		return nil, nil, err
	}
	var cfg []byte
	if m.ConfigSize >= 0 {
		if cfg, _, err = readBlob(r, FrameConfig, m.ConfigSize, "config"); err != nil {
			return nil, nil, err
		}
	}
	art, err := workload.NewSummed(wasm, wasmSum, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrRefused, err)
	}
	if art.Digest.String() != k.digest {
		return nil, nil, fmt.Errorf("%w: the package received has digest %s, the keep attested to %s", ErrRefused, art.Digest, k.digest)
	}
	return m, art, nil
}

// readBlob reads a blob of size bytes sent as frames of type want, each
// straight into the blob's buffer, and hashes it as it arrives (the
// transfer, not the hash, is what a large module waits for).
func readBlob(r io.Reader, want byte, size int64, what string) ([]byte, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	buf := make([]byte, 0, min(size, 64<<20))
	h := sha256.New()
	for {
		typ, n, err := readFrameHeader(r, func(byte) int { return MaxFrame })
		if err != nil {
			return nil, sum, fmt.Errorf("reading the %s: %w", what, unexpected(err))
		}
		if typ != want {
			return nil, sum, fmt.Errorf("%w: frame type %d inside the %s", ErrRefused, typ, what)
		}
		if int64(len(buf))+int64(n) > size {
			return nil, sum, fmt.Errorf("%w: the %s is longer than the manifest's %d bytes", ErrRefused, what, size)
		}
		if size == 0 {
			// An empty blob still comes as one empty frame.
			break
		}
		if n == 0 {
			return nil, sum, fmt.Errorf("%w: empty frame inside the %s", ErrRefused, what)
		}
		at := len(buf)
		buf = slices.Grow(buf, n)[:at+n]
		if _, err := io.ReadFull(r, buf[at:]); err != nil {
			return nil, sum, fmt.Errorf("reading the %s: frame type %d: %w", what, typ, unexpected(err))
		}
		h.Write(buf[at:])
		if int64(len(buf)) == size {
			break
		}
	}
	h.Sum(sum[:0])
	return buf, sum, nil
}

// chain checks that the certificate chain the client passed is for the
// keep's own key.
func (k *Keep) chain(ders [][]byte) (*tls.Certificate, error) {
	leaf, err := x509.ParseCertificate(ders[0])
	if err != nil {
		return nil, fmt.Errorf("keep certificate: %w", err)
	}
	if !bytes.Equal(leaf.RawSubjectPublicKeyInfo, k.spki) {
		return nil, errors.New("keep certificate: issued for another key")
	}
	return &tls.Certificate{Certificate: ders, PrivateKey: k.key, Leaf: leaf}, nil
}

// frameWriter serialises frames from several goroutines.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) write(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return WriteFrame(f.w, typ, p)
}

// streamWriter frames a workload stream to the client, or after the
// client left, to the host or nowhere.
type streamWriter struct {
	fw     *frameWriter
	typ    byte
	onFail func()
	budget *outputBudget // nil: no output limit

	mu     sync.Mutex
	moved  bool
	target io.Writer
}

func (s *streamWriter) redirect(w io.Writer, use bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.moved = true
	if use {
		s.target = w
	}
}

// ExitMaxOutput is the exit status of a workload stopped by its output
// limit, as castellan run gives it.
const ExitMaxOutput = 125

// outputBudget counts a workload's stdout and stderr against one limit.
type outputBudget struct {
	mu      sync.Mutex
	left    int64
	once    sync.Once
	onLimit func()
}

// take returns how much of n bytes may still be written, and whether the
// limit is passed.
func (b *outputBudget) take(n int) (int, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if int64(n) <= b.left {
		b.left -= int64(n)
		return n, false
	}
	ok := int(b.left)
	b.left = 0
	return ok, true
}

func (s *streamWriter) Write(p []byte) (int, error) {
	if s.budget != nil {
		n, over := s.budget.take(len(p))
		s.write(p[:n])
		if over {
			s.budget.once.Do(s.budget.onLimit)
			return n, errors.New("output limit reached")
		}
		return len(p), nil
	}
	return s.write(p)
}

// write sends p on, outside any budget.
func (s *streamWriter) write(p []byte) (int, error) {
	s.mu.Lock()
	moved, target := s.moved, s.target
	s.mu.Unlock()
	if moved {
		if target != nil {
			target.Write(p)
		}
		return len(p), nil
	}
	for off := 0; off < len(p); off += MaxFrame {
		end := min(off+MaxFrame, len(p))
		if err := s.fw.write(s.typ, p[off:end]); err != nil {
			s.onFail()
			return len(p), nil
		}
	}
	return len(p), nil
}
