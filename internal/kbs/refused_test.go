package kbs

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestRefusalBounded: a service's refusal reaches the keep's error (and
// from there the client and the host's log) with its type and detail cut
// to maxRefusalText bytes each, whatever their length in the answer (up
// to maxBody).
func TestRefusalBounded(t *testing.T) {
	long := strings.Repeat("é", 200<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(ErrorInformation{Type: ErrorType + long, Detail: long})
	}))
	defer srv.Close()
	c := &Client{URL: srv.URL, TEE: "snp", HTTP: srv.Client()}
	err := c.Attest(context.Background())
	if err == nil || len(err.Error()) > 3*maxRefusalText || !strings.Contains(err.Error(), "éé...") {
		t.Fatalf("refusal of %d bytes: %.100v", len(err.Error()), err)
	}
}
