package retryhttp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		status int
		header string
		wait   time.Duration
		busy   bool
	}{
		{429, "", time.Second, true},
		{429, "3", 3 * time.Second, true},
		{429, "0", 0, true},
		{429, now.Add(5 * time.Second).Format(http.TimeFormat), 5 * time.Second, true},
		{429, now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{429, "soon", time.Second, true},
		{503, "", 0, false},
		{503, "2", 2 * time.Second, true},
		{500, "2", 0, false},
		{200, "2", 0, false},
	}
	for _, tt := range tests {
		resp := &http.Response{StatusCode: tt.status, Header: http.Header{}}
		if tt.header != "" {
			resp.Header.Set("Retry-After", tt.header)
		}
		wait, busy := RetryAfter(resp, now)
		if wait != tt.wait || busy != tt.busy {
			t.Errorf("%d Retry-After %q: %v %v, want %v %v", tt.status, tt.header, wait, busy, tt.wait, tt.busy)
		}
	}
}

func TestDo(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/busy-once":
			if calls.Add(1) == 1 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			w.Write(b) // the body is sent again whole
		case "/always-busy":
			calls.Add(1)
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/long-wait":
			calls.Add(1)
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()
	send := func(ctx context.Context, path string) (*http.Response, error) {
		calls.Store(0)
		return Do(ctx, srv.Client(), func() (*http.Request, error) {
			return http.NewRequestWithContext(ctx, "POST", srv.URL+path, bytes.NewReader([]byte("body")))
		})
	}
	resp, err := send(context.Background(), "/busy-once")
	if err != nil || resp.StatusCode != 200 || calls.Load() != 2 {
		t.Fatalf("busy once: %v %v after %d calls", resp, err, calls.Load())
	}
	if b, _ := io.ReadAll(resp.Body); string(b) != "body" {
		t.Fatalf("the retry sent body %q", b)
	}
	resp, err = send(context.Background(), "/always-busy")
	if err != nil || resp.StatusCode != 503 || calls.Load() != MaxTries {
		t.Fatalf("always busy: %v %v after %d calls, want the 503 after %d", resp, err, calls.Load(), MaxTries)
	}
	resp, err = send(context.Background(), "/long-wait")
	if err != nil || resp.StatusCode != 429 || calls.Load() != 1 {
		t.Fatalf("a wait over MaxWait: %v %v after %d calls, want the 429 at once", resp, err, calls.Load())
	}
	// A wait is cut short by the context.
	ctx, cancel := context.WithCancel(context.Background())
	srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "5")
		w.WriteHeader(http.StatusTooManyRequests)
		cancel()
	}))
	defer srv2.Close()
	_, err = Do(ctx, srv2.Client(), func() (*http.Request, error) { return http.NewRequest("GET", srv2.URL, nil) })
	if err == nil {
		t.Fatal("a cancelled wait returned no error")
	}
}
