package host

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestDeployStopsKeepOnFailure: when delivery fails after the keep's
// evidence was accepted, here because the relay answers the attach itself
// and presents its own TLS certificate instead of the keep's attested key,
// Deploy stops the keep before it returns: the keep is not left ready
// until the agent's attach timeout.
func TestDeployStopsKeepOnFailure(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AttachTimeout = 10 * time.Minute })
	agent := h.agent.Handler()
	// A relay in the middle: the agent's API, except that it answers the
	// attach and runs TLS to the client with its own key.
	var mitm *httptest.Server
	mitm = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/attach") {
			agent.ServeHTTP(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + RelayProtocol + "\r\nConnection: Upgrade\r\n\r\n")
		brw.Flush()
		tc := mitm.TLS.Clone()
		tc.NextProtos = []string{delivery.ALPN}
		tls.Server(conn, tc).Handshake() // the client refuses this key
	}))
	defer mitm.Close()
	roots := x509.NewCertPool()
	roots.AddCert(mitm.Certificate())
	c, err := NewClient(mitm.URL, h.token, roots)
	if err != nil {
		t.Fatal(err)
	}
	art := artifact(t, fixtures.C(t, "hello"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var created *Keep
	_, _, err = c.Deploy(ctx, DeployOptions{Backend: "sim-snp", Verifier: &delivery.InsecureVerifier{SimRoots: simRoots(t)},
		Delivery: delivery.Delivery{Artifact: art},
		OnKeep:   func(k *Keep) { created = k }})
	if err == nil || !strings.Contains(err.Error(), "not the attested keep key") {
		t.Fatalf("deploy through a relay with its own key: %v", err)
	}
	if created == nil {
		t.Fatal("no keep was created: the test proves nothing")
	}
	k, err := h.client.Get(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if k.State != StateStopped {
		t.Errorf("keep %s is %s after the failed delivery, want stopped", k.ID, k.State)
	}
}
