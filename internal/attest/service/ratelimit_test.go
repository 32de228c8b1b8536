package service

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/kbs"
)

// limited rebuilds h's service with a per-client limit of rate a second,
// bursts of burst, logging to *logged.
func limited(t *testing.T, h *harness, rate float64, burst int, logged *[]string) {
	t.Helper()
	var err error
	h.svc, err = New(Config{Policy: h.store, CA: h.ca, Audit: h.log, Now: func() time.Time { return h.now },
		NonceKey: h.nonceKey, UsedNonces: h.log, ClientRate: rate, ClientBurst: burst,
		Logf: func(f string, a ...any) { *logged = append(*logged, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
}

func TestClientRateLimit(t *testing.T) {
	h := newHarness(t)
	var logged []string
	limited(t, h, 2, 3, &logged)
	before, err := h.log.Recent(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if w := h.doFrom("10.0.0.1:1000", "POST", "/v1/challenge", nil); w.Code != http.StatusOK {
			t.Fatalf("request %d within the burst: %d %s", i, w.Code, w.Body)
		}
	}
	w := h.doFrom("10.0.0.1:1001", "POST", "/v1/certificate", []byte("{}"))
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("request past the burst: %d, Retry-After %q, want 429 and 1", w.Code, w.Header().Get("Retry-After"))
	}
	var e ErrorResponse
	if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Check != CheckRate || !strings.Contains(e.Error, "too many requests from 10.0.0.1/32") {
		t.Fatalf("refusal %s, want check rate naming the address", w.Body)
	}
	// The KBS endpoints answer in the KBS protocol's error form.
	w = h.doFrom("10.0.0.1:1002", "POST", kbs.PathAuth, []byte("{}"))
	var ki kbs.ErrorInformation
	if w.Code != http.StatusTooManyRequests || json.Unmarshal(w.Body.Bytes(), &ki) != nil || !strings.HasSuffix(ki.Type, "TooManyRequests") {
		t.Fatalf("KBS request past the burst: %d %s", w.Code, w.Body)
	}
	// The CA's certificate and key are public downloads, never limited.
	for _, p := range []string{"/v1/ca", "/v1/jwks"} {
		if w := h.doFrom("10.0.0.1:1003", "GET", p, nil); w.Code != http.StatusOK {
			t.Fatalf("GET %s from a limited address: %d", p, w.Code)
		}
	}
	// Another address has its own bucket.
	if w := h.doFrom("10.0.0.2:1000", "POST", "/v1/challenge", nil); w.Code != http.StatusOK {
		t.Fatalf("another address: %d", w.Code)
	}
	// Tokens come back at the rate: half a second gives one.
	h.now = h.now.Add(500 * time.Millisecond)
	if w := h.doFrom("10.0.0.1:1000", "POST", "/v1/challenge", nil); w.Code != http.StatusOK {
		t.Fatalf("after half a second: %d", w.Code)
	}
	if w := h.doFrom("10.0.0.1:1000", "POST", "/v1/challenge", nil); w.Code != http.StatusTooManyRequests {
		t.Fatalf("second request after half a second: %d, want 429", w.Code)
	}
	// Refusals are not audited: a flood must not grow the audit log.
	after, err := h.log.Recent(context.Background(), 1000)
	if err != nil || len(after) != len(before) {
		t.Fatalf("audit log went from %d to %d decisions (%v)", len(before), len(after), err)
	}
	// The operator hears of refusals at most once a minute.
	if len(logged) != 0 {
		t.Fatalf("logged within the first minute: %q", logged)
	}
	h.now = h.now.Add(time.Minute)
	for range 4 {
		h.doFrom("10.0.0.3:1", "POST", "/v1/challenge", nil)
	}
	if len(logged) != 1 || !strings.Contains(logged[0], "refused 4 requests from 2 addresses") || !strings.Contains(logged[0], "most from 10.0.0.1/32: 3") {
		t.Fatalf("log %q, want one line of 4 refusals from 2 addresses", logged)
	}
}

func TestClientKey(t *testing.T) {
	tests := []struct {
		remote, want string
	}{
		{"192.0.2.7:443", "192.0.2.7/32"},
		{"[::ffff:192.0.2.7]:443", "192.0.2.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::9]:1", "2001:db8:1:2::/64"},
		{"[fe80::1%eth0]:1", "fe80::/64"},
		{"@", ""}, // a Unix socket: not limited
		{"", ""},
	}
	for _, tt := range tests {
		p, ok := clientKey(tt.remote)
		if got := p.String(); ok != (tt.want != "") || ok && got != tt.want {
			t.Errorf("clientKey(%q) = %s, %v; want %q", tt.remote, got, ok, tt.want)
		}
	}
}

// TestClientLimiterBounded: addresses beyond the table's bound push older
// ones out instead of growing memory, and an address seen in the older
// generation keeps its bucket.
func TestClientLimiterBounded(t *testing.T) {
	now := time.Unix(1e9, 0)
	l := newClientLimiter(1, 2, now)
	hot := netip.MustParsePrefix("198.51.100.1/32")
	l.allow(hot, now)
	l.allow(hot, now)
	for i := range 3 * maxClients {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.allow(netip.PrefixFrom(a, 32), now)
		if i == maxClients/2 {
			// still in the table (one of the two generations): its
			// bucket is empty.
			if ok, _ := l.allow(hot, now); ok {
				t.Fatal("an address found again got a fresh bucket")
			}
		}
		if n := len(l.cur) + len(l.prev); n > 2*maxClients {
			t.Fatalf("%d addresses remembered, more than %d", n, 2*maxClients)
		}
	}
	// A generation also ends with age: an idle address is forgotten.
	later := now.Add(3 * clientIdle)
	l.allow(hot, later)
	l.allow(hot, later.Add(clientIdle))
	if n := len(l.cur) + len(l.prev); n != 1 {
		t.Fatalf("%d addresses remembered after two idle generations, want the one still sending", n)
	}
}
