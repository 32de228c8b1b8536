package delivery

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"github.com/castellan-dev/castellan/internal/strictjson"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/workload"
)

func randomNonce() ([]byte, error) {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		return nil, err
	}
	return n, nil
}

// Session is the client's side of one delivery: an ephemeral key that the
// keep will require in TLS (its SHA-256 goes into the create request).
type Session struct {
	cert    *tls.Certificate
	KeyHash []byte
}

// NewSession makes the client's ephemeral TLS key.
func NewSession() (*Session, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	cert, err := selfSigned(key, "castellan deploy")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(cert.Leaf.RawSubjectPublicKeyInfo)
	return &Session{cert: cert, KeyHash: sum[:]}, nil
}

// Delivery is what the client sends and where the output goes.
type Delivery struct {
	Artifact *workload.Artifact
	Name     string
	Args     []string
	Secrets  map[string]string
	// Detach returns once the keep said the package checked out; the
	// workload runs on, its output going where its config says
	// (detached_output).
	Detach         bool
	Stdout, Stderr io.Writer
	// OnStarted, if set, is called when the keep accepted the package.
	OnStarted func()
}

// RefusedError is the keep's refusal of what the client sent.
type RefusedError struct{ Reason string }

func (e *RefusedError) Error() string { return "the keep refused the delivery: " + e.Reason }

// CheckSecrets parses the package's config (if any) and checks that the
// secrets supplied are exactly those it declares, so that a client can
// refuse before it asks for a keep. The keep checks again.
func CheckSecrets(art *workload.Artifact, secrets map[string]string) (*config.Config, error) {
	var cfg *config.Config
	if art.Config != nil {
		var err error
		if cfg, err = config.Parse("package config", art.Config); err != nil {
			return nil, err
		}
	}
	if cfg != nil && len(cfg.SecretRefs) > 0 {
		return nil, errors.New("the config fetches secrets by kbs:/// reference ([secrets.kbs]); a delivered keep does not fetch them: run it where it attests to a service (castellan run --attest, the containerd shim)")
	}
	names := make([]string, 0, len(secrets))
	for k := range secrets {
		names = append(names, k)
	}
	if err := cfg.CheckSecrets(names); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Deliver opens TLS to the keep over conn with the keep's attested key
// pinned, sends the package and secrets, and copies the workload's output
// until it exits (or, detached, until it started). conn is closed.
func (s *Session) Deliver(ctx context.Context, conn net.Conn, v *Verified, d Delivery) (*Result, error) {
	tc := tls.Client(conn, &tls.Config{
		Certificates:       []tls.Certificate{*s.cert},
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPN},
		InsecureSkipVerify: true, // the attested key is pinned below instead
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the keep sent no certificate")
			}
			if !bytes.Equal(cs.PeerCertificates[0].RawSubjectPublicKeyInfo, v.SPKI) {
				return errors.New("the TLS peer's key is not the attested keep key (the host is in the middle)")
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("protocol %q, want %s", cs.NegotiatedProtocol, ALPN)
			}
			return nil
		},
	})
	defer tc.Close()
	// Runs first: a keep that stopped reading must not hold up the
	// close_notify for tls.Conn's 5 s.
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("tls to the keep: %w", err)
	}
	art := d.Artifact
	m := Manifest{
		Digest: art.Digest.String(), Name: d.Name, WasmSize: int64(len(art.Wasm)), ConfigSize: -1,
		Args: d.Args, Secrets: d.Secrets, CertChain: v.CertChain, Detach: d.Detach,
	}
	if art.Config != nil {
		m.ConfigSize = int64(len(art.Config))
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	// Send while reading, so that an early refusal is seen.
	sendErr := make(chan error, 1)
	go func() {
		sendErr <- send(tc, mb, art)
	}()
	started := false
	for {
		typ, p, err := ReadFrame(tc, MaxFrame)
		if err != nil {
			select {
			case serr := <-sendErr:
				if serr != nil {
					return nil, fmt.Errorf("sending the package: %w", serr)
				}
			default:
			}
			return nil, fmt.Errorf("connection to the keep: %w", unexpected(err))
		}
		switch typ {
		case FrameStarted:
			var st Started
			if err := strictjson.Decode(p, &st); err != nil || st.Digest != m.Digest {
				return nil, fmt.Errorf("keep started %q, want %s", st.Digest, m.Digest)
			}
			started = true
			if d.OnStarted != nil {
				d.OnStarted()
			}
			if d.Detach {
				return &Result{ExitCode: 0, Reason: "detached"}, nil
			}
		case FrameStdout:
			if started && d.Stdout != nil {
				d.Stdout.Write(p)
			}
		case FrameStderr:
			if started && d.Stderr != nil {
				d.Stderr.Write(p)
			}
		case FrameExit:
			var r Result
			if err := strictjson.Decode(p, &r); err != nil {
				return nil, fmt.Errorf("exit frame: %w", err)
			}
			return &r, nil
		case FrameError:
			r := string(p)
			if len(r) > maxRefusal {
				r = r[:maxRefusal]
			}
			return nil, &RefusedError{Reason: r}
		default:
			return nil, fmt.Errorf("unknown frame type %d from the keep", typ)
		}
	}
}

func send(w io.Writer, manifest []byte, art *workload.Artifact) error {
	if err := WriteFrame(w, FrameManifest, manifest); err != nil {
		return err
	}
	if err := sendBlob(w, FrameWasm, art.Wasm); err != nil {
		return err
	}
	if art.Config != nil {
		return sendBlob(w, FrameConfig, art.Config)
	}
	return nil
}

func sendBlob(w io.Writer, typ byte, b []byte) error {
	if len(b) == 0 {
		return WriteFrame(w, typ, nil)
	}
	for off := 0; off < len(b); off += MaxFrame {
		if err := WriteFrame(w, typ, b[off:min(off+MaxFrame, len(b))]); err != nil {
			return err
		}
	}
	return nil
}

// SPKIFingerprint returns "sha256:<hex>" of an SPKI, for messages.
func SPKIFingerprint(spki []byte) string {
	sum := sha256.Sum256(spki)
	return fmt.Sprintf("sha256:%x", sum)
}
