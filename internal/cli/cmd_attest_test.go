package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/audit/audittest"
	"github.com/castellan-dev/castellan/internal/attest/client"
	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/service"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// attestServer runs "castellan attest serve" in-process and reads its stderr.
type attestServer struct {
	url    string
	caPEM  string
	seen   []string // lines waitFor read
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
			s.seen = append(s.seen, l)
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
	// The simulation CA's collateral beside its roots, where a stored CA
	// keeps it: the service checks simulated evidence against it.
	coll, err := simCA.Collateral()
	if err != nil {
		t.Fatal(err)
	}
	for url, r := range coll {
		if err := collateral.Put(filepath.Join(dir, sim.CollateralDir), url, r); err != nil {
			t.Fatal(err)
		}
	}
}

// attestFiles writes a policy and measurements trusting a new simulation
// root into a new folder.
func attestFiles(t *testing.T) (string, *sim.CA) {
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	return dir, simCA
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
	dir, simCA := attestFiles(t)
	srv := startAttestServe(t, dir)
	if want := "vendor collateral: fetched from AMD and Intel as needed, cached in " + filepath.Join(dir, "state", "collateral"); !strings.Contains(strings.Join(srv.seen, "\n"), want) {
		t.Errorf("attest serve did not say %q before it served: %q", want, srv.seen)
	}
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
	if code != 0 || !strings.Contains(out, "platform:    snp (simulated)") || !strings.Contains(out, "workload:    "+attestDigest) ||
		!strings.Contains(out, "checked:     vmpl=0\n") || !strings.Contains(out, "checked:     collateral=verified\n") {
		t.Errorf("verify snp: %d\n%s%s", code, out, errs)
	}
	code, out, errs = runCLI("verify", keeps["tdx"], "--ca", srv.caPEM, "--json", "--allow-insecure")
	var v verifyOutput
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Platform != "tdx" || !v.Verified || v.WorkloadDigest != attestDigest ||
		v.Status != "warning" || !strings.HasPrefix(v.SPIFFEID, "spiffe://castellan.invalid/workload/") {
		t.Errorf("verify tdx --json: %d\n%s%s", code, out, errs)
	}
	// What the service checked on the hardware is in the certificate.
	if d := v.Details; d["tcb_status"] != "UpToDate" || d["qe_tcb_status"] != "UpToDate" || d["collateral"] != "verified" || d["td_attributes"] != "0x10000000" || d["rtmr0"] == "" {
		t.Errorf("verify tdx --json details: %v", d)
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
		{"verify", "https://127.0.0.1:1", "--allow-insecure", "--platform", "sev"},
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
	dsn := audittest.PostgresDSN(t)
	dir, simCA := attestFiles(t)
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

// Two `attest serve` replicas on one PostgreSQL database and one state
// folder (so one CA and one nonce key): a nonce from one is redeemed at the
// other once; a replay at either is refused.
// keepClient plays a sim-snp keep against attest serve, step by step.
type keepClient struct {
	t     *testing.T
	hc    *http.Client
	simCA *sim.CA
}

func newKeepClient(t *testing.T, caFile string, simCA *sim.CA) *keepClient {
	roots := x509.NewCertPool()
	caPEM, _ := os.ReadFile(caFile)
	roots.AppendCertsFromPEM(caPEM)
	return &keepClient{t: t, simCA: simCA,
		hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}}
}

func (k *keepClient) post(url string, body []byte, out any) int {
	k.t.Helper()
	resp, err := k.hc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		k.t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// request gets a challenge at serviceURL and returns a certificate request
// body for attestDigest.
func (k *keepClient) request(serviceURL string, ear bool) []byte {
	t := k.t
	t.Helper()
	var ch service.ChallengeResponse
	if code := k.post(serviceURL+"/v1/challenge", nil, &ch); code != http.StatusOK {
		t.Fatalf("challenge: %d", code)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki, _ := x509.MarshalPKIXPublicKey(key.Public())
	env, err := tee.Attest(context.Background(), tee.NewSim(evidence.PlatformSNP, k.simCA), spki, ch.Nonce, attestDigest)
	if err != nil {
		t.Fatal(err)
	}
	evb, _ := env.Marshal()
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	body, _ := json.Marshal(service.CertificateRequest{CSR: csr, Evidence: evb, EAR: ear})
	return body
}

// castellan verify --ear checks the EAR attest serve returns on request.
func TestVerifyEAR(t *testing.T) {
	dir, simCA := attestFiles(t)
	srv := startAttestServe(t, dir)
	kc := newKeepClient(t, srv.caPEM, simCA)
	var cr service.CertificateResponse
	if code := kc.post(srv.url+"/v1/certificate", kc.request(srv.url, true), &cr); code != http.StatusOK || cr.EAR == "" {
		t.Fatalf("certificate with an EAR: %d, EAR %q", code, cr.EAR)
	}
	earFile := filepath.Join(dir, "result.jwt")
	os.WriteFile(earFile, []byte(cr.EAR+"\n"), 0o644)

	code, out, errs := runCLI("verify", "--ear", earFile, "--ca", srv.caPEM, "--allow-insecure", "--digest", attestDigest, "--platform", "snp")
	for _, want := range []string{"status:      warning", "workload:    " + attestDigest, "platform:    snp (simulated)",
		"spiffe id:   spiffe://castellan.invalid/workload/", "vector:      ", "hardware=32", "verified:    yes"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("verify --ear: %d, want %q in\n%s%s", code, want, out, errs)
		}
	}
	code, out, _ = runCLI("verify", "--ear", earFile, "--ca", srv.caPEM, "--allow-insecure", "--json")
	var v earOutput
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || !v.Verified || v.Status != "warning" || v.WorkloadDigest != attestDigest || v.TrustVector["executables"] != 2 {
		t.Errorf("verify --ear --json: %d %s", code, out)
	}

	// Refusals, each one line naming the file.
	tampered := filepath.Join(dir, "tampered.jwt")
	parts := strings.Split(cr.EAR, ".")
	parts[1] = parts[1][:len(parts[1])-2] + "AA"
	os.WriteFile(tampered, []byte(strings.Join(parts, ".")), 0o644)
	otherCA := filepath.Join(dir, "other-ca.pem")
	os.WriteFile(otherCA, simCA.RootsPEM(), 0o644)
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--ear", earFile, "--ca", srv.caPEM}, "status is warning (simulated snp) and insecure keeps are not allowed"},
		{[]string{"--ear", tampered, "--ca", srv.caPEM, "--allow-insecure"}, "failed verifying"},
		{[]string{"--ear", earFile, "--ca", otherCA, "--allow-insecure"}, "ear: "},
		{[]string{"--ear", earFile, "--ca", srv.caPEM, "--allow-insecure", "--digest", strings.Replace(attestDigest, "1", "2", 1)}, "expected sha256:"},
		{[]string{"--ear", earFile, "--ca", srv.caPEM, "--allow-insecure", "--platform", "tdx"}, "platform snp"},
		{[]string{"--ear", filepath.Join(dir, "missing"), "--ca", srv.caPEM}, "no such file"},
	} {
		code, _, errs := runCLI(append([]string{"verify"}, tt.args...)...)
		if code != ExitError || !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "castellan: error: ") {
			t.Errorf("%v: %d %q, want a one-line error with %q", tt.args, code, errs, tt.want)
		}
	}
	for _, args := range [][]string{
		{"verify", "--ear", earFile},
		{"verify", "--ear", earFile, "--ca", srv.caPEM, "https://127.0.0.1:1"},
	} {
		if code, _, errs := runCLI(args...); code != ExitUsage {
			t.Errorf("%v: %d %q, want a usage error", args, code, errs)
		}
	}
}

// TestAttestServePortProbe: a connection closed before the TLS handshake
// (a port probe) is one short line through the command's output, not Go's
// "http: TLS handshake error ... EOF" on the process's stderr.
func TestAttestServePortProbe(t *testing.T) {
	dir, _ := attestFiles(t)
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

// TestAttestServeCollateralFlags: --offline needs its folder, and takes no
// PCCS; a PCCS must be https.
func TestAttestServeCollateralFlags(t *testing.T) {
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	base := []string{"attest", "serve", "--listen", "127.0.0.1:0", "--policy", filepath.Join(dir, "policy.toml"),
		"--measurements", filepath.Join(dir, "measurements.toml"), "--state-dir", filepath.Join(dir, "state")}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--offline", "--collateral-dir", filepath.Join(dir, "none")}, "--offline: collateral folder " + filepath.Join(dir, "none") + ": not a folder"},
		{[]string{"--offline", "--collateral-dir", dir, "--pccs", "https://pccs.example"}, "--offline and --pccs: give one"},
		{[]string{"--pccs", "http://pccs.example"}, `--pccs "http://pccs.example": want an https:// URL`},
	} {
		code, _, errs := runCLI(append(append([]string{}, base...), tt.args...)...)
		if code != ExitError || !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%v: %d %q, want a one-line error with %q", tt.args, code, errs, tt.want)
		}
	}
}

// TestAttestServeAuditRetain: with --audit-retain, decisions older than
// the retention are deleted when the service starts (and hourly after),
// newer ones kept.
func TestAttestServeAuditRetain(t *testing.T) {
	dir := t.TempDir()
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	writeAttestFiles(t, dir, simCA, false)
	ctx := context.Background()
	db := filepath.Join(dir, "state", "audit.db")
	log, err := audit.Open(ctx, "sqlite:"+db)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, at := range []time.Time{now.Add(-100 * 24 * time.Hour), now.Add(-91 * 24 * time.Hour), now.Add(-time.Hour)} {
		if err := log.Record(ctx, audit.Decision{Time: at, Check: "nonce", Reason: "old", Remote: "192.0.2.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	log.Close()
	s := startAttestServe(t, dir, "--audit-retain", "2160h")
	s.waitFor(t, "audit log: deleted 2 decisions from before ")
	log, err = audit.Open(ctx, "sqlite:"+db)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	left, err := log.Recent(ctx, 10)
	if err != nil || len(left) != 1 || left[0].Time.Before(now.Add(-2*time.Hour)) {
		t.Fatalf("left %+v (%v), want the decision of an hour ago", left, err)
	}
	for _, tt := range []struct{ arg, want string }{
		{"-1h", "--audit-retain: -1h0m0s is not 0 (keep all) or at least 1h"},
		{"5m", "--audit-retain: 5m0s is not 0 (keep all) or at least 1h"},
	} {
		code, _, errs := runCLI("attest", "serve", "--policy", "p", "--measurements", "m", "--audit-retain", tt.arg)
		if code != ExitUsage || !strings.Contains(errs, tt.want) {
			t.Errorf("--audit-retain %s: %d %q, want %q", tt.arg, code, errs, tt.want)
		}
	}
}
