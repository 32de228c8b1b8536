// Package delivery is Castellan's confidential delivery protocol: how a
// workload owner hands a package and its secrets to a keep on a host that
// neither of them trusts, so that the host only ever moves ciphertext.
//
// The keep side (Keep) makes a fresh P-256 key when it starts and asks its
// TEE backend for evidence that binds, through the report data,
//
//	the keep's public key (SPKI), the client's nonce, and the digest of the
//	package the client said it will send.
//
// The workload is not known when the keep starts, so the client names the
// package digest it will deliver in its create request and the keep
// attests to that expected digest; once the bytes arrive the keep rebuilds
// the artifact, computes the digest of what it actually received and
// refuses to run anything else. A verifier therefore learns from the
// hardware: "this measured runtime holds this key, answered my nonce and
// will run only this package". The keep also sends a CSR for its key, so
// that the client can trade evidence and CSR at the attestation service for
// a keep certificate and pass the chain into the keep.
//
// The client side (Verifier, Session.Deliver) checks the evidence (locally
// with an owner's policy file, or through the attestation service), then
// opens TLS 1.3 to the keep over any byte stream (the host agent relays a
// raw connection) with the keep's attested key pinned, and sends a
// manifest, the Wasm module, the config and the secrets. Output comes back
// as frames on the same TLS connection. Secrets are declared by the
// package's config (names only) and their values travel only in the
// manifest, inside TLS; the keep puts environment secrets into the
// workload's environment and secret files into in-memory descriptors,
// never on the host's disk.
//
// Wire format inside TLS: frames of one type byte, a big-endian uint32
// length and that many payload bytes (at most MaxFrame).
package delivery

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/strictjson"
	"io"
	"net"
	"net/url"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/config"
)

// ALPN is the TLS application protocol of a delivery connection.
const ALPN = "castellan-delivery/1"

// Limits on what either side accepts from the other.
const (
	MaxFrame        = 1 << 20   // one frame's payload
	MaxManifest     = MaxFrame  // the manifest frame (it carries the secrets)
	MaxWasmSize     = 1 << 30   // a module, as `castellan run` allows
	MaxConfigSize   = 1 << 20   // a TOML config
	MaxSecrets      = 64        // secret values (environment and files)
	MaxSecretSize   = 64 << 10  // one secret value
	MaxSecretsTotal = 960 << 10 // all secret names and values, within one manifest frame
	MaxArgs         = 256
	MaxHelloSize    = evidence.MaxEnvelopeSize + 8<<10
	maxCertChainLen = 4
)

// Frame types. Client to keep: Manifest, Wasm, Config. Keep to client:
// Started, Stdout, Stderr, Exit, Error.
const (
	FrameManifest byte = 1
	FrameWasm     byte = 2
	FrameConfig   byte = 3
	FrameStarted  byte = 16
	FrameStdout   byte = 17
	FrameStderr   byte = 18
	FrameExit     byte = 19
	FrameError    byte = 20
)

// Hello is what a keep publishes when it is ready: its evidence envelope
// (CBOR) and a CSR for its key (DER). Both are public; the host agent
// relays them to the client.
type Hello struct {
	Evidence []byte `json:"evidence"`
	CSR      []byte `json:"csr"`
}

// Manifest is the first frame the client sends: what follows and how to
// run it. Secrets are the values of the secrets the package's config
// declares ([secrets] env and kind = "secret" files); they are not part of
// the package digest, and the keep refuses a set that differs from the
// declared one.
type Manifest struct {
	Digest     string            `json:"digest"`
	Name       string            `json:"name,omitempty"`
	WasmSize   int64             `json:"wasm_size"`
	ConfigSize int64             `json:"config_size"` // -1: the package has no config
	Args       []string          `json:"args,omitempty"`
	Secrets    map[string]string `json:"secrets,omitempty"`
	// CertChain is the keep certificate chain (DER, leaf first) that the
	// attestation service issued for the keep's key; the keep presents it
	// on its TLS listeners. Empty: the keep uses a self-signed certificate.
	CertChain [][]byte `json:"cert_chain,omitempty"`
	// Detach lets the workload run on after the client hangs up; its
	// output then goes to the host only when the package's config says
	// detached_output = "host" (the config is covered by the digest, so
	// neither the host nor a client option can change it).
	Detach bool `json:"detach,omitempty"`
}

// SecretService names the attestation service a keep fetches the
// secrets its config names by kbs:/// reference ([secrets.kbs]) from. It
// is part of how the host starts the keep (the containerd shim's runtime
// options), never of what a client delivers: a client of the host agent
// cannot make a keep call out to an address of its choice. The host may
// name any service: a service of its own cannot learn the real values
// (they come only from a service whose policy releases them to this
// digest), and a config that must not accept values from another service
// names it as steward, which the keep then requires.
type SecretService struct {
	URL string // https://host:port of a Castellan attestation service
	// RootsPEM are the service's TLS roots (PEM); empty: the system's.
	RootsPEM []byte
	// Dial, if not nil, makes the keep's connections to the service (a VM
	// keep's go through the host's relay, vmproto); nil: the network.
	// TLS runs over them to URL's host name either way.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Bounds on a secret service.
const (
	maxServiceURL   = 2048
	maxServiceRoots = 64 << 10
)

// Check checks the service's URL (https://host[:port][/path]) and bounds.
func (s *SecretService) Check() error {
	if len(s.URL) > maxServiceURL {
		return fmt.Errorf("secret service url of %d bytes, more than %d", len(s.URL), maxServiceURL)
	}
	u, err := url.Parse(s.URL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("secret service url %q is not an https://host[:port] URL", truncate(s.URL))
	}
	if len(s.RootsPEM) > maxServiceRoots {
		return fmt.Errorf("secret service roots of %d bytes, more than %d", len(s.RootsPEM), maxServiceRoots)
	}
	if len(s.RootsPEM) > 0 && !x509.NewCertPool().AppendCertsFromPEM(s.RootsPEM) {
		return errors.New("secret service roots: no PEM certificate in them")
	}
	return nil
}

// Started is the keep's answer once the package checked out.
type Started struct {
	Digest string `json:"digest"`
}

// Result is how a workload ended, sent in the Exit frame.
type Result struct {
	ExitCode int    `json:"exit_code"`
	Reason   string `json:"reason,omitempty"` // empty for a normal exit
}

// check applies the manifest rules the keep enforces.
func (m *Manifest) check() error {
	if err := evidence.CheckDigest(m.Digest); err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	if m.WasmSize <= 0 || m.WasmSize > MaxWasmSize {
		return fmt.Errorf("manifest: wasm_size %d is not between 1 and %d", m.WasmSize, MaxWasmSize)
	}
	if m.ConfigSize < -1 || m.ConfigSize > MaxConfigSize {
		return fmt.Errorf("manifest: config_size %d is not between -1 and %d", m.ConfigSize, MaxConfigSize)
	}
	if len(m.Args) > MaxArgs {
		return fmt.Errorf("manifest: %d args, more than %d", len(m.Args), MaxArgs)
	}
	if len(m.Secrets) > MaxSecrets {
		return fmt.Errorf("manifest: %d secrets, more than %d", len(m.Secrets), MaxSecrets)
	}
	total := 0
	for k, v := range m.Secrets {
		total += len(k) + len(v)
		if total > MaxSecretsTotal {
			return fmt.Errorf("manifest: the secrets are over %d bytes together", MaxSecretsTotal)
		}
		if !config.ValidSecretName(k) {
			return fmt.Errorf("manifest: secret name %q is not a secret name", truncate(k))
		}
		if len(v) > MaxSecretSize || strings.ContainsRune(v, 0) {
			return fmt.Errorf("manifest: secret %s is over %d bytes or holds a NUL byte", k, MaxSecretSize)
		}
	}
	if len(m.CertChain) > maxCertChainLen {
		return fmt.Errorf("manifest: certificate chain of %d, more than %d", len(m.CertChain), maxCertChainLen)
	}
	return nil
}

// ParseManifest decodes a manifest frame strictly.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifest {
		return nil, fmt.Errorf("manifest: %d bytes, more than %d", len(b), MaxManifest)
	}
	var m Manifest
	if err := strictjson.Decode(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// ParseHello decodes a keep's hello strictly and checks that its evidence
// envelope parses.
func ParseHello(b []byte) (*Hello, *evidence.Envelope, error) {
	if len(b) > MaxHelloSize {
		return nil, nil, fmt.Errorf("keep hello: %d bytes, more than %d", len(b), MaxHelloSize)
	}
	var h Hello
	if err := strictjson.Decode(b, &h); err != nil {
		return nil, nil, fmt.Errorf("keep hello: %w", err)
	}
	env, err := evidence.Parse(h.Evidence)
	if err != nil {
		return nil, nil, fmt.Errorf("keep hello: %w", err)
	}
	if len(h.CSR) == 0 || len(h.CSR) > 8<<10 {
		return nil, nil, fmt.Errorf("keep hello: csr is %d bytes, want 1 to %d", len(h.CSR), 8<<10)
	}
	return &h, env, nil
}

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame of %d bytes, more than %d", len(payload), MaxFrame)
	}
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(payload)))
	if len(payload) <= 4096 {
		_, err := w.Write(append(h[:], payload...))
		return err
	}
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one frame of at most max payload bytes.
func ReadFrame(r io.Reader, max int) (typ byte, payload []byte, err error) {
	return ReadFrameOf(r, func(byte) int { return max })
}

// ReadFrameOf reads one frame whose payload bound depends on its type:
// limit gives it (at most MaxFrame), or a negative number for a type that
// is not accepted. The bound is checked before the payload is allocated.
func ReadFrameOf(r io.Reader, limit func(typ byte) int) (typ byte, payload []byte, err error) {
	typ, n, err := readFrameHeader(r, limit)
	if err != nil {
		return 0, nil, err
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return 0, nil, fmt.Errorf("frame type %d: %w", typ, unexpected(err))
	}
	return typ, payload, nil
}

// readFrameHeader reads a frame's type and payload length, refusing a
// type limit does not accept (negative) and a length above its bound (at
// most MaxFrame).
func readFrameHeader(r io.Reader, limit func(typ byte) int) (typ byte, n int, err error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, 0, err
	}
	max := limit(h[0])
	if max < 0 {
		return 0, 0, fmt.Errorf("frame of unknown type 0x%02x", h[0])
	}
	if max > MaxFrame {
		max = MaxFrame
	}
	l := binary.BigEndian.Uint32(h[1:])
	if int64(l) > int64(max) {
		return 0, 0, fmt.Errorf("frame type %d of %d bytes, more than %d", h[0], l, max)
	}
	return h[0], int(l), nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
