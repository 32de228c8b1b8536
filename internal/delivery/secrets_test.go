package delivery

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/workload"
)

// TestSecretFile delivers a secret declared as a file: the workload (the
// stdin fixture, which upper-cases descriptor 0) reads it from the keep's
// memory.
func TestSecretFile(t *testing.T) {
	cfg := "[[files]]\nkind = \"secret\"\nname = \"api.key\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"
	art := load(t, "go", "stdin", []byte(cfg))
	k, sess, v := pair(t, art.Digest.String())
	var out, errOut syncBuf
	res, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: art, Secrets: map[string]string{"api.key": "line one\nline two\n"}, Stdout: &out, Stderr: &errOut})
	if err != nil || kerr != nil {
		t.Fatalf("deliver: %v; keep: %v (stderr %q)", err, kerr, errOut.String())
	}
	if res.ExitCode != 0 || out.String() != "LINE ONE\nLINE TWO\nbytes: 18\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, out.String(), errOut.String())
	}
}

// TestKeepRefusesSecrets: the keep runs nothing when the secrets sent are
// not exactly those the config declares (a client that skipped its own
// check, or an older one).
func TestKeepRefusesSecrets(t *testing.T) {
	declared := load(t, "c", "hello", []byte("[secrets]\nenv = [\"DB_PASSWORD\"]\n[[files]]\nkind = \"secret\"\nname = \"key\"\n"+stdio))
	none := load(t, "c", "hello", nil)
	cases := []struct {
		name    string
		art     bool // declared, else none
		secrets map[string]string
		want    string
	}{
		{"missing", true, map[string]string{"DB_PASSWORD": "x"}, "not supplied: key"},
		{"undeclared", true, map[string]string{"DB_PASSWORD": "x", "key": "k", "EXTRA": "y"}, "does not declare: EXTRA"},
		{"no config", false, map[string]string{"A": "y"}, "does not declare: A"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			art := none
			if c.art {
				art = declared
			}
			k, sess, v := pair(t, art.Digest.String())
			var out syncBuf
			_, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: art, Secrets: c.secrets, Stdout: &out})
			checkRefused(t, err, kerr, c.want, out.String())
		})
		// The client refuses the same before it asks for a keep.
		art := none
		if c.art {
			art = declared
		}
		if _, err := CheckSecrets(art, c.secrets); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckSecrets: %v", c.name, err)
		}
	}
}

// TestDetachedOutput: a detached workload's output goes to the host only
// when its config says detached_output = "host".
func TestDetachedOutput(t *testing.T) {
	for _, c := range []struct {
		setting string
		toHost  bool
	}{{"", false}, {"detached_output = \"discard\"\n", false}, {"detached_output = \"host\"\n", true}} {
		art := load(t, "c", "hello", []byte(c.setting+stdio))
		k, sess, v := pair(t, art.Digest.String())
		c1, c2 := socketPair(t)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var host, log syncBuf
		done := make(chan error, 1)
		go func() {
			_, err := k.Serve(ctx, c1, ServeOptions{HostOutput: &host, Log: func(f string, a ...any) { log.Write([]byte(f + "\n")) }})
			done <- err
		}()
		res, err := sess.Deliver(ctx, c2, v, Delivery{Artifact: art, Detach: true})
		if err != nil || res.Reason != "detached" {
			t.Fatalf("%q: deliver: %+v %v", c.setting, res, err)
		}
		if err := <-done; err != nil {
			t.Fatalf("%q: keep: %v", c.setting, err)
		}
		cancel()
		got := strings.Contains(host.String(), "hello from C in a keep")
		if got != c.toHost || (!c.toHost && host.String() != "") {
			t.Errorf("%q: host output %q, want to host: %v", c.setting, host.String(), c.toHost)
		}
	}
}

// TestKeepFetchRefused: a config that fetches secrets by kbs:///
// reference runs only when the keep fetched them itself from the secret
// service its host named (the steward, when the config names one), with
// evidence; a client cannot supply them.
func TestKeepFetchRefused(t *testing.T) {
	refs := "[secrets]\nenv = [\"DB_PASSWORD\"]\n[secrets.kbs]\nDB_PASSWORD = \"kbs:///default/db/password\"\n" + stdio
	fetching := load(t, "c", "hello", []byte(refs))
	stewarded := load(t, "c", "hello", []byte("steward = \"https://attest.example:8443\"\n"+refs))
	svc := &SecretService{URL: "https://other.example:8443"}
	hostCA, pinned := testCA(t, "the host's own CA"), testCA(t, "the steward's CA")
	pinnedRefs := load(t, "c", "hello", []byte("steward = \"https://attest.example:8443\"\nsteward_ca = \""+certDigest(pinned)+"\"\n"+refs))
	hostRoots := &SecretService{URL: "https://attest.example:8443", RootsPEM: certPEM(hostCA)}
	for _, c := range []struct {
		name    string
		art     *workload.Artifact
		svc     *SecretService
		secrets map[string]string
		want    string
	}{
		{"no service", fetching, nil, nil, "this keep was started with no attestation service to fetch them from"},
		{"supplied", fetching, svc, map[string]string{"DB_PASSWORD": "x"}, "secrets were supplied that the keep fetches by kbs:/// reference ([secrets.kbs]): DB_PASSWORD"},
		{"not the steward", stewarded, svc, nil, "the keep's secret service is https://other.example:8443, the config's steward is https://attest.example:8443"},
		{"no evidence", fetching, svc, nil, "backend nil has no evidence"},
		{"the host's roots, not the pinned CA", pinnedRefs, hostRoots, nil, "the host's TLS roots for the secret service (certificates: 1) do not include the config's steward_ca " + certDigest(pinned)},
		{"no roots from the host and a pinned CA", pinnedRefs, &SecretService{URL: "https://attest.example:8443"}, nil, "(certificates: 0) do not include the config's steward_ca"},
	} {
		t.Run(c.name, func(t *testing.T) {
			k, sess, v := pair(t, c.art.Digest.String())
			var out syncBuf
			_, err, _, kerr := runWith(t, k, sess, v, Delivery{Artifact: c.art, Secrets: c.secrets, Stdout: &out}, ServeOptions{SecretService: c.svc})
			checkRefused(t, err, kerr, c.want, out.String())
		})
	}
}

// TestStewardCAPin: with steward_ca, of the roots the host gives, the keep
// trusts the pinned certificate alone; without it, all of them.
func TestStewardCAPin(t *testing.T) {
	hostCA, pinned := testCA(t, "the host's own CA"), testCA(t, "the steward's CA")
	svc := &SecretService{URL: "https://attest.example:8443", RootsPEM: append(certPEM(hostCA), certPEM(pinned)...)}
	trusts := func(pool *x509.CertPool, c *x509.Certificate) bool {
		_, err := c.Verify(x509.VerifyOptions{Roots: pool})
		return err == nil
	}
	pool, err := secretServiceRoots(svc, &config.Config{Steward: svc.URL, StewardCA: certDigest(pinned)}, ServeOptions{})
	if err != nil || !trusts(pool, pinned) || trusts(pool, hostCA) {
		t.Fatalf("pinned: %v; trusts the pinned CA %v, the host's %v", err, pool != nil && trusts(pool, pinned), pool != nil && trusts(pool, hostCA))
	}
	var notes []string
	pool, err = secretServiceRoots(svc, &config.Config{Steward: svc.URL}, ServeOptions{Log: func(f string, a ...any) { notes = append(notes, fmt.Sprintf(f, a...)) }})
	if err != nil || !trusts(pool, pinned) || !trusts(pool, hostCA) {
		t.Fatalf("unpinned: %v", err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "pins no steward_ca") {
		t.Errorf("unpinned roots went unremarked: %q", notes)
	}
}

// testCA is a self-signed CA certificate.
func testCA(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func certDigest(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestSecretServiceCheck: the secret service is an https URL of bounded
// size with bounded PEM roots, and only the keep's host names it: a
// client's manifest cannot.
func TestSecretServiceCheck(t *testing.T) {
	for _, c := range []struct {
		svc  SecretService
		want string
	}{
		{SecretService{URL: "http://attest.example"}, `secret service url "http://attest.example" is not an https://host[:port] URL`},
		{SecretService{URL: "https://"}, "is not an https://host[:port] URL"},
		{SecretService{URL: "https://user:pw@attest.example"}, "is not an https://host[:port] URL"},
		{SecretService{URL: "https://attest.example/?x=1"}, "is not an https://host[:port] URL"},
		{SecretService{URL: "https://attest.example/#f"}, "is not an https://host[:port] URL"},
		{SecretService{URL: "https://a" + strings.Repeat("b", 2048)}, "secret service url of 2057 bytes, more than 2048"},
		{SecretService{URL: "https://attest.example", RootsPEM: make([]byte, 66000)}, "secret service roots of 66000 bytes, more than 65536"},
		{SecretService{URL: "https://attest.example", RootsPEM: []byte("not pem")}, "secret service roots: no PEM certificate in them"},
	} {
		if err := c.svc.Check(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.60s: got %v, want %q", c.svc.URL, err, c.want)
		}
	}
	if err := (&SecretService{URL: "https://attest.example:8443"}).Check(); err != nil {
		t.Errorf("a good secret service refused: %v", err)
	}
	m := `{"digest":"sha256:` + strings.Repeat("a", 64) + `","wasm_size":1,"config_size":-1,"secret_service":{"url":"https://evil.example"}}`
	if _, err := ParseManifest([]byte(m)); err == nil || !strings.Contains(err.Error(), "secret_service") {
		t.Errorf("a manifest naming a secret service: %v, want refused", err)
	}
}

// checkRefused checks that the keep refused a delivery, saying want to
// the client, and that nothing ran.
func checkRefused(t *testing.T, err, kerr error, want, out string) {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, want) || !errors.Is(kerr, ErrRefused) {
		t.Errorf("client: %v; keep: %v; want %q", err, kerr, want)
	}
	if out != "" {
		t.Errorf("a refused workload ran: %q", out)
	}
}
