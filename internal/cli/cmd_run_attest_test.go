package cli

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestAttestTimeout: an attestation service that never answers is given
// up after --attest-timeout, and the error names the limit and its flag
// instead of "context deadline exceeded".
func TestAttestTimeout(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	wasm := fixtures.Go(t, "hello")
	pkgWantFail(t, 1, `^castellan: error: attestation with `+srv.URL+`: no certificate within the attestation time limit of 300ms \(--attest-timeout\)$`,
		"run", "--backend", "nil", "--attest", srv.URL, "--attest-ca", ca, "--attest-timeout", "300ms", wasm)
	pkgWantFail(t, 2, `^castellan: error: --attest-timeout: 0s is not positive$`, "run", "--attest-timeout", "0s", wasm)

	// deploy --host asks the service for a nonce before it asks the agent
	// for anything: the same limit, the same words.
	store := filepath.Join(dir, "store")
	pkgMustRun(t, "package", "build", "--store", store, "-t", "hello:1", wasm)
	pkgWantFail(t, 1, `^castellan: error: .*no certificate within the attestation time limit of 300ms \(--attest-timeout\)$`,
		"deploy", "--store", store, "--host", "https://127.0.0.1:1", "--token", "cstl_x", "--attest", srv.URL, "--attest-ca", ca, "--attest-timeout", "300ms", "--backend", "nil", "hello:1")
}
