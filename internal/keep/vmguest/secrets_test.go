package vmguest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/service"
	"github.com/castellan-dev/castellan/internal/attest/service/servicetest"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/internal/workload"
)

// kbsService is a real attestation service over TLS whose policy trusts
// simCA's sim-snp keeps of measurement and binds default/db/password
// (value) to digest; it returns its URL and CA.
func kbsService(t *testing.T, simCA *sim.CA, measurement []byte, digest, value string, opts ...func(*service.Config)) (string, *ca.CA) {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"roots.pem":   string(simCA.RootsPEM()),
		"db-password": value,
		"policy.toml": fmt.Sprintf("nonce_lifetime = \"60s\"\ncertificate_lifetime = \"10m\"\nworkloads = [\"any\"]\n[platforms.snp]\nsim_roots = [%q]\n"+
			"[[secret]]\nresource = \"default/db/password\"\nfile = \"db-password\"\nworkloads = [%q]\n", filepath.Join(dir, "roots.pem"), digest),
		"measurements.toml": fmt.Sprintf("[[measurement]]\nplatform = \"snp\"\nvalue = %q\nname = \"a sim-snp vm keep\"\n", hex.EncodeToString(measurement)),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return servicetest.Start(t, filepath.Join(dir, "policy.toml"), filepath.Join(dir, "measurements.toml"), opts...)
}

// TestGuestFetchesSecrets runs the whole guest in-process with a sim-snp
// backend and a config that names a secret by kbs:/// reference: the keep
// attests to a real attestation service through the host's relay on the
// channel (it has no network) and gets the value bound to its digest; the
// host dials only the service's address. (That the channel carries only
// ciphertext is TestRelayHTTPS's, in vmproto.)
func TestGuestFetchesSecrets(t *testing.T) {
	const marker = "vm-relayed-secret-6b0e"
	wasm, err := os.ReadFile(fixtures.Go(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	// The service's CA is made first, so that the config can pin it
	// (steward_ca): the keep then trusts it alone among the roots the host
	// gives.
	serviceCA, err := ca.New("the steward's CA")
	if err != nil {
		t.Fatal(err)
	}
	pin := sha256.Sum256(serviceCA.Cert.Raw)
	art, err := workload.New(wasm, []byte(fmt.Sprintf("steward_ca = \"sha256:%x\"\n", pin)+"[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"+
		"[secrets]\nenv = [\"DB_PASSWORD\"]\n[secrets.kbs]\nDB_PASSWORD = \"kbs:///default/db/password\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	simCA, err := sim.New()
	if err != nil {
		t.Fatal(err)
	}
	measurement := bytes.Repeat([]byte{0xab}, 48)
	srvURL, srvCA := kbsService(t, simCA, measurement, art.Digest.String(), marker, func(c *service.Config) { c.CA = serviceCA })
	// The host gives the keep its own CA beside the steward's: the pin
	// picks the steward's.
	other, err := ca.New("the host's own CA")
	if err != nil {
		t.Fatal(err)
	}

	conn, _, _ := boot(t)
	sess, _ := delivery.NewSession()
	req := request(t, "sim-snp", sess, art.Digest.String())
	req.SimCA = simCA.MarshalPEM()
	req.SimMeasurement = measurement
	req.SecretServiceURL = srvURL
	req.SecretServiceRoots = append(append([]byte(nil), other.PEM...), srvCA.PEM...)
	var mu sync.Mutex
	var dialled []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialled = append(dialled, addr)
		mu.Unlock()
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := vmproto.Handshake(ctx, conn, req, vmproto.WithRelayDial(dial))
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	evDone := make(chan struct{})
	go func() {
		for e := range h.Events() {
			events = append(events, e.Text)
		}
		close(evDone)
	}()
	_, env, err := delivery.ParseHello(h.Hello())
	if err != nil {
		t.Fatal(err)
	}
	claims, err := verify.Envelope(env, verify.Options{SimRoots: simCA.Roots()})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res, err := sess.Deliver(ctx, h.Stream(), &delivery.Verified{Claims: claims, SPKI: claims.Key},
		delivery.Delivery{Artifact: art, Stdout: &out, Stderr: io.Discard})
	if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "env DB_PASSWORD="+marker+"\n") {
		t.Fatalf("deliver: %v, %+v, stdout %q", err, res, out.String())
	}
	if _, err := h.Wait(); err != nil {
		t.Fatal(err)
	}
	<-evDone
	u, _ := url.Parse(srvURL)
	if len(dialled) == 0 {
		t.Fatal("the host dialled nothing")
	}
	for _, a := range dialled {
		if a != u.Host {
			t.Fatalf("the host dialled %q, want only %s", a, u.Host)
		}
	}
	log := strings.Join(events, "\n")
	if !strings.Contains(log, "secret service relay: stream 1 open to "+u.Host) || !strings.Contains(log, "fetched 1 secrets from "+srvURL) {
		t.Errorf("the keep's log lacks the relay's open or the fetch:\n%s", log)
	}
}
