// Package servicetest runs the attestation service for other packages'
// tests: the real service (internal/attest/service) with the owner's
// policy files, an SQLite audit log and a fresh CA, over real TLS on
// loopback.
package servicetest

import (
	"context"
	"crypto/tls"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/ca"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/attest/service"
)

// Start runs the service with policyFile and measFile on 127.0.0.1 and
// returns its https URL and its CA, which also issued the service's TLS
// certificate (c.PEM are the roots a client trusts). It stops when the
// test ends. opts change the service's Config before it starts.
func Start(t testing.TB, policyFile, measFile string, opts ...func(*service.Config)) (url string, c *ca.CA) {
	t.Helper()
	store, err := policy.Open(policyFile, measFile)
	if err != nil {
		t.Fatal(err)
	}
	if c, err = ca.New("test attestation CA"); err != nil {
		t.Fatal(err)
	}
	log, err := audit.Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := service.Config{Policy: store, CA: c, Audit: log}
	for _, o := range opts {
		o(&cfg)
	}
	c = cfg.CA // an option's CA issues the TLS certificate too
	svc, err := service.New(cfg)
	if err != nil {
		log.Close()
		t.Fatal(err)
	}
	cert, err := c.ServerCertificate([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		log.Close()
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(svc)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.StartTLS()
	t.Cleanup(func() {
		srv.Close()
		log.Close()
	})
	return srv.URL, c
}
