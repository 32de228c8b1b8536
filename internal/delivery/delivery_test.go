package delivery

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// stdio is the files part of a config with the usual three streams.
const stdio = "[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"

func load(t testing.TB, lang, name string, cfg []byte) *workload.Artifact {
	t.Helper()
	var p string
	if lang == "go" {
		p = fixtures.Go(t, name)
	} else {
		p = fixtures.C(t, name)
	}
	wasm, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	art, err := workload.New(wasm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return art
}

// pair runs a keep for art on one end of a pipe and returns the client's
// verified view and session.
func pair(t testing.TB, digest string) (*Keep, *Session, *Verified) {
	t.Helper()
	sess, err := NewSession()
	if err != nil {
		t.Fatal(err)
	}
	v := &InsecureVerifier{}
	nonce, _ := v.Nonce(context.Background())
	k, err := NewKeep(context.Background(), tee.Nil{}, nonce, digest, sess.KeyHash)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := v.Verify(context.Background(), &k.Hello, nonce, digest)
	if err != nil {
		t.Fatal(err)
	}
	return k, sess, ver
}

func run(t *testing.T, k *Keep, sess *Session, v *Verified, d Delivery) (*Result, error, *Result, error) {
	t.Helper()
	return runWith(t, k, sess, v, d, ServeOptions{})
}

// runWith is run with the keep's options.
func runWith(t testing.TB, k *Keep, sess *Session, v *Verified, d Delivery, o ServeOptions) (*Result, error, *Result, error) {
	t.Helper()
	c1, c2 := socketPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var kres *Result
	var kerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		kres, kerr = k.Serve(ctx, c1, o)
		c1.Close()
	}()
	res, err := sess.Deliver(ctx, c2, v, d)
	<-done
	return res, err, kres, kerr
}

func TestDeliverGoHello(t *testing.T) {
	art := load(t, "go", "hello", []byte("args = [\"from-config\"]\n[secrets]\nenv = [\"S\"]\n"+stdio))
	k, sess, v := pair(t, art.Digest.String())
	var out, errOut syncBuf
	res, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: art, Args: []string{"x"}, Secrets: map[string]string{"S": "v"}, Stdout: &out, Stderr: &errOut})
	if err != nil || kerr != nil {
		t.Fatalf("deliver: %v; keep: %v", err, kerr)
	}
	for _, want := range []string{"hello from a keep", "arg[1]=from-config", "arg[2]=x", "env S=v"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout %q lacks %q", out.String(), want)
		}
	}
	if res.ExitCode != 0 {
		t.Errorf("exit %d", res.ExitCode)
	}
}

// TestOutputLimit: the config's max_output counts stdout and stderr in the
// keep; past it the client gets status 125 and the reason, as from
// castellan run, and no more output.
func TestOutputLimit(t *testing.T) {
	art := load(t, "c", "hello", []byte("[limits]\nmax_output = \"10\"\n"+stdio))
	k, sess, v := pair(t, art.Digest.String())
	var out, errOut syncBuf
	res, err, kres, kerr := run(t, k, sess, v, Delivery{Artifact: art, Stdout: &out, Stderr: &errOut})
	if err != nil || kerr != nil {
		t.Fatalf("deliver: %v; keep: %v", err, kerr)
	}
	if res.ExitCode != ExitMaxOutput || res.Reason != "output limit of 10 bytes reached" || kres.ExitCode != ExitMaxOutput {
		t.Errorf("client result %+v, keep result %+v", res, kres)
	}
	if got := out.String() + errOut.String(); got != "hello from" {
		t.Errorf("output %q, want the first 10 bytes", got)
	}
}

// TestKeepRefuses sends what a malicious or buggy client (or a host that
// got hold of a connection) could: the keep runs nothing it did not
// attest to.
func TestKeepRefuses(t *testing.T) {
	hello := load(t, "c", "hello", nil)
	other := load(t, "c", "hello", []byte(stdio))
	t.Run("manifest names another package", func(t *testing.T) {
		k, sess, v := pair(t, hello.Digest.String())
		_, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: other})
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, "the keep attested to "+hello.Digest.String()) {
			t.Errorf("client: %v", err)
		}
		if !errors.Is(kerr, ErrRefused) {
			t.Errorf("keep: %v", kerr)
		}
	})
	t.Run("bytes of another package under the attested digest", func(t *testing.T) {
		k, sess, v := pair(t, hello.Digest.String())
		forged := *other
		forged.Digest = hello.Digest // the manifest lies, the bytes are other's
		_, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: &forged})
		var re *RefusedError
		if !errors.As(err, &re) || !strings.Contains(re.Reason, "the package received has digest "+other.Digest.String()) {
			t.Errorf("client: %v", err)
		}
		if !errors.Is(kerr, ErrRefused) {
			t.Errorf("keep: %v", kerr)
		}
	})
	t.Run("another client's key", func(t *testing.T) {
		k, _, v := pair(t, hello.Digest.String())
		intruder, _ := NewSession()
		_, err, _, kerr := run(t, k, intruder, v, Delivery{Artifact: hello})
		if err == nil || kerr == nil || !strings.Contains(kerr.Error(), "not the one named when the keep was created") {
			t.Errorf("client: %v; keep: %v", err, kerr)
		}
	})
	t.Run("client pins another key (host in the middle)", func(t *testing.T) {
		k, sess, v := pair(t, hello.Digest.String())
		_, _, mitm := pair(t, hello.Digest.String())
		_, err, _, kerr := run(t, k, sess, &Verified{SPKI: mitm.SPKI}, Delivery{Artifact: hello})
		if err == nil || !strings.Contains(err.Error(), "not the attested keep key") || kerr == nil {
			t.Errorf("client: %v; keep: %v", err, kerr)
		}
		_ = v
	})
	t.Run("host folder in the config", func(t *testing.T) {
		dir := load(t, "c", "hello", []byte(stdio+"[[files]]\nkind = \"dir\"\nname = \"data\"\npath = \"/etc\"\n"))
		k, sess, v := pair(t, dir.Digest.String())
		_, err, _, _ := run(t, k, sess, v, Delivery{Artifact: dir})
		if err == nil || !strings.Contains(err.Error(), "host folders are outside the keep") {
			t.Errorf("client: %v", err)
		}
	})
}

func TestInsecureVerifierRefuses(t *testing.T) {
	art := load(t, "c", "hello", nil)
	sess, _ := NewSession()
	v := &InsecureVerifier{}
	nonce, _ := v.Nonce(context.Background())
	k, err := NewKeep(context.Background(), tee.Nil{}, nonce, art.Digest.String(), sess.KeyHash)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), &k.Hello, []byte("another nonce"), art.Digest.String()); !isCheck(err, "nonce") {
		t.Errorf("other nonce: %v", err)
	}
	if _, err := v.Verify(context.Background(), &k.Hello, nonce, "sha256:"+strings.Repeat("1", 64)); !isCheck(err, "workload") {
		t.Errorf("other digest: %v", err)
	}
	// Simulated evidence without the simulation roots is refused.
	sk, err := NewKeep(context.Background(), tee.NewSim("snp", nil), nonce, art.Digest.String(), sess.KeyHash)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), &sk.Hello, nonce, art.Digest.String()); !isCheck(err, "chain") {
		t.Errorf("sim evidence without roots: %v", err)
	}
}

func isCheck(err error, check string) bool {
	var ve *VerificationError
	return errors.As(err, &ve) && ve.Check == check
}

// socketPair returns two ends of a loopback TCP connection (kernel
// buffers, like the agent's relay; net.Pipe has none).
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c1, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}
