package collateral

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestFileName(t *testing.T) {
	tests := []struct{ url, want, err string }{
		{"https://kdsintf.amd.com/vcek/v1/Milan/crl", "kdsintf.amd.com/vcek/v1/Milan/crl", ""},
		{"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00806f050000", "api.trustedservices.intel.com/tdx/certification/v4/tcb@fmspc=00806f050000", ""},
		{"https://h/a/../../../etc/passwd", "h/etc/passwd", ""},
		{"https://h/.hidden", "", "cannot name a file"},
		{"https://h/", "", "names no document"},
		{"file:///etc/passwd", "", "want an http(s) URL"},
		{"/relative", "", "want an http(s) URL"},
		{"https://h/a?x=../../y", "h/a@x=..%2F..%2Fy", ""},
	}
	for _, tc := range tests {
		got, err := FileName(tc.url)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %q, %v; want error %q", tc.url, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.url, got, err, tc.want)
		}
	}
}

// FuzzFileName: whatever URL a certificate names, the file stays inside
// the collateral folder.
func FuzzFileName(f *testing.F) {
	for _, s := range []string{"https://kdsintf.amd.com/vcek/v1/Milan/crl", "https://h/../../x", "https://h/a?b=/../c", "http://h/%2e%2e/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		name, err := FileName(u)
		if err != nil {
			return
		}
		dir := "/collateral"
		p := filepath.Join(dir, filepath.FromSlash(name))
		if !strings.HasPrefix(p, dir+"/") || filepath.Clean(p) != p {
			t.Fatalf("%q names %q, outside %s", u, p, dir)
		}
		for _, part := range strings.Split(name, "/") {
			if strings.HasPrefix(part, ".") {
				t.Fatalf("%q names hidden part %q", u, part)
			}
		}
	})
}

func TestHTTPRetryAfter(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/missing":
			n.Add(1)
			http.NotFound(w, r)
		case r.URL.Path == "/slow":
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		case n.Add(1) < 3:
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusTooManyRequests)
		default:
			w.Header().Set("TCB-Info-Issuer-Chain", "chain")
			w.Header().Set("Set-Cookie", "not kept")
			w.Write([]byte("document"))
		}
	}))
	defer srv.Close()
	var waits []time.Duration
	h := &HTTP{Client: srv.Client(), MaxDelay: time.Minute, sleep: func(_ context.Context, d time.Duration) error {
		waits = append(waits, d)
		return nil
	}}
	r, err := h.Get(context.Background(), srv.URL+"/doc")
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Body) != "document" || r.Header.Get("Tcb-Info-Issuer-Chain") != "chain" || r.Header.Get("Set-Cookie") != "" {
		t.Errorf("response %q, headers %v", r.Body, r.Header)
	}
	if len(waits) != 2 || waits[0] != 7*time.Second || waits[1] != 7*time.Second {
		t.Errorf("waited %v, want the server's Retry-After of 7s twice", waits)
	}
	// A 404 is not retried.
	n.Store(0)
	if _, err := h.Get(context.Background(), srv.URL+"/missing"); !errors.Is(err, ErrNotFound) || n.Load() != 1 {
		t.Errorf("missing: %v after %d requests", err, n.Load())
	}
	// A server asking for more than MaxDelay gets an error, not a long wait.
	waits = nil
	_, err = h.Get(context.Background(), srv.URL+"/slow")
	if err == nil || !strings.Contains(err.Error(), "HTTP 429 (retry after 1h0m0s)") || len(waits) != 0 {
		t.Errorf("slow: %v, waited %v", err, waits)
	}
	// Failures back off exponentially, capped by MaxDelay.
	waits = nil
	h2 := &HTTP{Client: srv.Client(), Attempts: 4, FirstDelay: 10 * time.Second, MaxDelay: 25 * time.Second, sleep: h.sleep}
	h2.sleep = func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	if _, err := h2.Get(context.Background(), "http://127.0.0.1:1/x"); err == nil || !strings.Contains(err.Error(), "after 4 attempts") {
		t.Errorf("unreachable: %v", err)
	}
	if len(waits) != 3 || waits[0] != 10*time.Second || waits[1] != 20*time.Second || waits[2] != 25*time.Second {
		t.Errorf("backoff %v", waits)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"12":                            12 * time.Second,
		"-1":                            0,
		"99999999999":                   7 * 24 * time.Hour,
		"Thu, 01 Jan 2026 00:01:00 GMT": time.Minute,
		"Wed, 31 Dec 2025 00:00:00 GMT": 0,
		"soon":                          0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("Retry-After %q: %v, want %v", v, got, want)
		}
	}
}

func TestPCCS(t *testing.T) {
	rw := PCCS("https://pccs.example:8081/")
	if got := rw("https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity"); got != "https://pccs.example:8081/tdx/certification/v4/qe/identity" {
		t.Errorf("rewrote to %s", got)
	}
	// SGX's documents go to the PCCS the same way.
	if got := rw(SGXTCBInfoURL("00a067110000")); got != "https://pccs.example:8081/sgx/certification/v4/tcb?fmspc=00a067110000" {
		t.Errorf("rewrote %s", got)
	}
	if got := rw(IntelRootCRLURL); got != IntelRootCRLURL {
		t.Errorf("rewrote a non-PCS URL to %s", got)
	}
}

// countingSource counts fetches and can fail.
type countingSource struct {
	mu   sync.Mutex
	n    int
	fail error
	body string
	gate chan struct{}
}

func (c *countingSource) Get(ctx context.Context, url string) (*Response, error) {
	if c.gate != nil {
		<-c.gate
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if c.fail != nil {
		return nil, c.fail
	}
	return &Response{Body: []byte(c.body), Header: http.Header{"Tcb-Info-Issuer-Chain": {"x"}}}, nil
}

func TestCache(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	up := &countingSource{body: "v1"}
	c := &Cache{Dir: dir, Upstream: up, Now: func() time.Time { return now }}
	const u = "https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=00806f050000"
	get := func() *Response {
		t.Helper()
		r, err := c.Get(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := get(); string(r.Body) != "v1" || r.Header.Get("Tcb-Info-Issuer-Chain") != "x" || !r.Fetched.Equal(now) {
		t.Fatalf("first get: %+v", r)
	}
	get()
	if up.n != 1 {
		t.Errorf("%d fetches for two gets within the max age", up.n)
	}
	// Older than the max age: fetched again.
	now = now.Add(DefaultMaxAge + time.Minute)
	up.body = "v2"
	if r := get(); string(r.Body) != "v2" || up.n != 2 {
		t.Errorf("after the max age: %q, %d fetches", r.Body, up.n)
	}
	// Upstream down: the stale copy is used.
	now = now.Add(DefaultMaxAge + time.Minute)
	up.fail = errors.New("AMD is down")
	if r := get(); string(r.Body) != "v2" {
		t.Errorf("stale fallback: %q", r.Body)
	}
	// The folder, read offline, gives the same document and its headers.
	r, err := Offline(dir).Get(context.Background(), u)
	if err != nil || string(r.Body) != "v2" || r.Header.Get("Tcb-Info-Issuer-Chain") != "x" {
		t.Errorf("offline: %v, %+v", err, r)
	}
	_, err = Offline(dir).Get(context.Background(), "https://kdsintf.amd.com/vcek/v1/Milan/crl")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "kdsintf.amd.com/vcek/v1/Milan/crl") || !strings.Contains(err.Error(), dir) {
		t.Errorf("offline miss: %v", err)
	}
	// Missing and upstream down: the error.
	if _, err := c.Get(context.Background(), "https://kdsintf.amd.com/vcek/v1/Milan/crl"); err == nil || !strings.Contains(err.Error(), "AMD is down") {
		t.Errorf("miss with upstream down: %v", err)
	}
	// No temporary files left.
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if strings.Contains(filepath.Base(p), ".tmp") {
			t.Errorf("temporary file %s left", p)
		}
		return nil
	})
}

func TestCacheImmutableAndConcurrent(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	up := &countingSource{body: string(testCert(t)), gate: make(chan struct{})}
	c := &Cache{Dir: dir, Upstream: up, Now: func() time.Time { return now }}
	const u = "https://kdsintf.amd.com/vcek/v1/Milan/0011?blSPL=4&teeSPL=0&snpSPL=22&ucodeSPL=213"
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r, err := c.Get(context.Background(), u); err != nil || string(r.Body) != up.body {
				t.Errorf("%v %v", r, err)
			}
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the callers pile up; correctness does not depend on it
	close(up.gate)
	wg.Wait()
	if up.n > 8 || up.n < 1 {
		t.Fatalf("%d fetches", up.n)
	}
	n := up.n
	now = now.Add(365 * 24 * time.Hour)
	if _, err := c.Get(context.Background(), u); err != nil || up.n != n {
		t.Errorf("a VCEK certificate was fetched again after a year (%d fetches): %v", up.n, err)
	}
	// A page that is not a certificate, served at a VCEK URL, is not kept
	// for ever.
	const u2 = "https://kdsintf.amd.com/vcek/v1/Milan/0022?blSPL=4&teeSPL=0&snpSPL=22&ucodeSPL=213"
	up.body = "<html>busy</html>"
	if _, err := c.Get(context.Background(), u2); err != nil {
		t.Fatal(err)
	}
	now = now.Add(DefaultMaxAge + time.Minute)
	n = up.n
	if _, err := c.Get(context.Background(), u2); err != nil || up.n != n+1 {
		t.Errorf("a non-certificate at a VCEK URL was not fetched again (%d fetches): %v", up.n, err)
	}
}

// testCert is a self-signed certificate's DER.
func testCert(t *testing.T) []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestLimit(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	up := &countingSource{body: "x"}
	l := &Limit{Source: up, PerMinute: 2, Now: func() time.Time { return now }}
	get := func() error {
		_, err := l.Get(context.Background(), "https://kdsintf.amd.com/vcek/v1/Milan/00")
		return err
	}
	for range 2 {
		if get() != nil {
			t.Fatal("one of the first two fetches was refused")
		}
	}
	if err := get(); err == nil || !strings.Contains(err.Error(), "more than 2 collateral fetches a minute") {
		t.Errorf("third fetch in the same minute: %v", err)
	}
	now = now.Add(30 * time.Second)
	if err := get(); err != nil {
		t.Errorf("after half a minute: %v", err)
	}
	if up.n != 3 {
		t.Errorf("%d fetches reached the source, want 3", up.n)
	}
}
