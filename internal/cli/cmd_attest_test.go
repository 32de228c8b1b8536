package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// attestServer runs "castellan attest serve" in-process and reads its stderr.
type attestServer struct {
	url    string
	caPEM  string
	lines  chan string
	cancel context.CancelFunc
	done   chan int
}

func startAttestServe(t *testing.T, dir string, extra ...string) *attestServer {
	t.Helper()
	pr, pw := io.Pipe()
	e := &Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: pw}
	fs := e.FlagSet(attestServeCmd)
	f := addAttestServeFlags(fs)
	args := append([]string{"--listen", "127.0.0.1:0", "--policy", filepath.Join(dir, "policy.toml"),
		"--measurements", filepath.Join(dir, "measurements.toml"), "--state-dir", filepath.Join(dir, "state"),
		"--reload-interval", "10ms"}, extra...)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &attestServer{lines: make(chan string, 100), cancel: cancel, done: make(chan int, 1)}
	go func() { s.done <- serveAttest(ctx, e, f); pw.Close() }()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	line := s.waitFor(t, "attestation service on ")
	s.url = strings.Fields(strings.SplitN(line, "attestation service on ", 2)[1])[0]
	s.caPEM = filepath.Join(dir, "state", "ca.pem")
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	return s
}

func (s *attestServer) waitFor(t *testing.T, substr string) string {
	t.Helper()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				t.Fatalf("attest serve ended before printing %q", substr)
			}
			if strings.Contains(l, substr) {
				return l
			}
		case <-timeout:
			t.Fatalf("attest serve did not print %q", substr)
		}
	}
}

const attestDigest = "sha256:7e57000000000000000000000000000000000000000000000000000000000001"

func writeAttestFiles(t *testing.T, dir string, simCA *sim.CA, revoked bool) {
	m, err := sim.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{
		"roots.pem": string(simCA.RootsPEM()),
		"policy.toml": fmt.Sprintf(`workloads = [%q]
[platforms.snp]
sim_roots = ["roots.pem"]
[platforms.tdx]
sim_roots = ["roots.pem"]
`, attestDigest),
		"measurements.toml": fmt.Sprintf(`[[measurement]]
platform = "snp"
value = %[1]q
name = "this test binary"
revoked = %[2]v
[[measurement]]
platform = "tdx"
value = %[1]q
name = "this test binary"
`, hex.EncodeToString(m), revoked),
	} {
		writeAtomic(t, filepath.Join(dir, name), s)
	}
}

// writeAtomic replaces a file as a deploy tool would, so that the service's
// watcher never sees it half-written.
func writeAtomic(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// keepListener serves TLS handshakes with cert until the test ends.
func keepListener(t *testing.T, cert *tls.Certificate) string {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return "https://" + ln.Addr().String()
}

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestAttestServeAndVerify(t *testing.T) {
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	srv := startAttestServe(t, dir)
	caPEM, err := os.ReadFile(srv.caPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	if st, err := os.Stat(filepath.Join(dir, "state", "ca-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("ca key: %v %v", st, err)
	}

	keeps := map[string]string{}
	for _, p := range []string{evidence.PlatformSNP, evidence.PlatformTDX} {
		cert, _, err := client.Obtain(context.Background(), srv.url, roots, tee.NewSim(p, simCA), attestDigest, "")
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		srv.waitFor(t, "issued ")
		keeps[p] = keepListener(t, cert)
	}

	code, out, errs := runCLI("verify", keeps["snp"], "--ca", srv.caPEM, "--digest", attestDigest, "--platform", "snp,tdx", "--allow-insecure")
	if code != 0 || !strings.Contains(out, "platform:    snp (simulated)") || !strings.Contains(out, "workload:    "+attestDigest) {
		t.Errorf("verify snp: %d\n%s%s", code, out, errs)
	}
	code, out, errs = runCLI("verify", keeps["tdx"], "--ca", srv.caPEM, "--json", "--allow-insecure")
	var v verifyOutput
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Platform != "tdx" || !v.Verified || v.WorkloadDigest != attestDigest {
		t.Errorf("verify tdx --json: %d\n%s%s", code, out, errs)
	}
	for _, tt := range []struct {
		args       []string
		want, hint string
	}{
		{[]string{"verify", keeps["snp"], "--ca", srv.caPEM}, "insecure", "castellan: hint: pass --allow-insecure "},
		{[]string{"verify", keeps["snp"], "--ca", srv.caPEM, "--allow-insecure", "--digest", strings.Replace(attestDigest, "1", "2", 1)}, "expected " + strings.Replace(attestDigest, "1", "2", 1), ""},
		{[]string{"verify", keeps["snp"], "--ca", srv.caPEM, "--allow-insecure", "--platform", "tdx"}, "platform snp", ""},
		{[]string{"verify", keeps["snp"], "--ca", filepath.Join(dir, "roots.pem"), "--allow-insecure"}, "certificate signed by unknown authority", "castellan: hint: pass --ca with the CA certificate of the attestation service"},
	} {
		code, _, errs := runCLI(tt.args...)
		errLine, hint, _ := strings.Cut(errs, "\n")
		if code != ExitError || !strings.HasPrefix(errLine, "castellan: error: ") || !strings.Contains(errLine, tt.want) ||
			(tt.hint == "") != (hint == "") || !strings.HasPrefix(hint, tt.hint) || strings.Count(hint, "\n") > 1 {
			t.Errorf("%v: %d %q, want a one-line error with %q and hint %q", tt.args[1:], code, errs, tt.want, tt.hint)
		}
	}

	// Revoking the SEV-SNP measurement in the file refuses the next keep.
	writeAttestFiles(t, dir, simCA, true)
	srv.waitFor(t, "reloaded")
	_, _, err = client.Obtain(context.Background(), srv.url, roots, tee.NewSim(evidence.PlatformSNP, simCA), attestDigest, "")
	var re *client.RefusedError
	if !errors.As(err, &re) || re.Check != "revoked" {
		t.Errorf("after revocation: %v", err)
	}
	// A bad edit keeps the policy in force.
	writeAtomic(t, filepath.Join(dir, "policy.toml"), "workloads = [\"any\"]\nbogus = true\n")
	srv.waitFor(t, "policy.toml:2: unknown key bogus")
	if _, _, err := client.Obtain(context.Background(), srv.url, roots, tee.NewSim(evidence.PlatformTDX, simCA), attestDigest, ""); err != nil {
		t.Errorf("after a bad edit: %v", err)
	}
}

func TestAttestServeUsage(t *testing.T) {
	for _, args := range [][]string{
		{"attest", "serve"},
		{"attest", "serve", "--policy", "p", "--measurements", "m", "--ca-cert", "c"},
		{"verify"},
		{"verify", "https://127.0.0.1:1"},
		{"verify", "http://127.0.0.1:1", "--allow-insecure"},
		{"verify", "https://127.0.0.1:1", "--allow-insecure", "--platform", "sgx"},
	} {
		if code, _, errs := runCLI(args...); code != ExitUsage || !strings.HasPrefix(errs, "castellan: error: ") {
			t.Errorf("%v: %d %q", args, code, errs)
		}
	}
	if _, err := net.Dial("tcp", "127.0.0.1:1"); err == nil {
		t.Skip("something listens on port 1")
	}
	if code, _, errs := runCLI("verify", "127.0.0.1:1", "--allow-insecure"); code != ExitError || !strings.Contains(errs, "connecting to 127.0.0.1:1") {
		t.Errorf("verify of a closed port: %d %q", code, errs)
	}
}

// TestAttestServePostgres records decisions in PostgreSQL when
// CASTELLAN_TEST_POSTGRES names one (see notes/attest.md).
func TestAttestServePostgres(t *testing.T) {
	dsn := os.Getenv("CASTELLAN_TEST_POSTGRES")
	if dsn == "" {
		t.Skip("CASTELLAN_TEST_POSTGRES is not set: no PostgreSQL to test against (see notes/attest.md)")
	}
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	srv := startAttestServe(t, dir, "--database", dsn)
	roots := x509.NewCertPool()
	b, _ := os.ReadFile(srv.caPEM)
	roots.AppendCertsFromPEM(b)
	cert, _, err := client.Obtain(context.Background(), srv.url, roots, tee.NewSim(evidence.PlatformTDX, simCA), attestDigest, "")
	if err != nil {
		t.Fatal(err)
	}
	srv.waitFor(t, "issued ")
	log, err := audit.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	recs, err := log.Recent(context.Background(), 1)
	if err != nil || len(recs) != 1 || !recs[0].Accepted || recs[0].Serial != hex.EncodeToString(cert.Leaf.SerialNumber.Bytes()) {
		t.Fatalf("latest PostgreSQL record %+v, %v; want the certificate just issued", recs, err)
	}
}

// TestAttestServePortProbe: a connection closed before the TLS handshake
// (a port probe) is one short line through the command's output, not Go's
// "http: TLS handshake error ... EOF" on the process's stderr.
func TestAttestServePortProbe(t *testing.T) {
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	srv := startAttestServe(t, dir)
	c, err := net.Dial("tcp", strings.TrimPrefix(srv.url, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	l := srv.waitFor(t, "closed before the TLS handshake")
	if strings.Contains(l, "http:") || strings.Contains(l, "warning") {
		t.Errorf("port probe logged as %q", l)
	}
}
