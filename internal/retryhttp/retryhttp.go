// Package retryhttp sends a request again when the server says it is busy
// for now: 429 Too Many Requests, or 503 Service Unavailable with a
// Retry-After header (the attestation service's per-client limit and its
// in-flight bound answer so). It waits what the server asks, within
// bounds, and gives up when the context ends; any other answer is the
// caller's.
package retryhttp

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Bounds of the retries: a server asking for a longer wait, or busy more
// times, gets its answer passed on.
const (
	MaxWait  = 10 * time.Second
	MaxTries = 8
)

// Do sends the request newReq makes (once a try: a body is read once) with
// hc, and again after the wait a busy answer asks for.
func Do(ctx context.Context, hc *http.Client, newReq func() (*http.Request, error)) (*http.Response, error) {
	for try := 1; ; try++ {
		req, err := newReq()
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		wait, busy := RetryAfter(resp, time.Now())
		if !busy || try == MaxTries || wait > MaxWait {
			return resp, nil
		}
		// Drain a little so the connection can be reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-t.C:
		}
	}
}

// RetryAfter says whether resp is a busy answer worth retrying and how
// long it asks to wait: 429 (with or without Retry-After: then one
// second), or 503 with a Retry-After header (a 503 without one may be an
// outage, not a queue). Retry-After is delay-seconds or an HTTP date.
func RetryAfter(resp *http.Response, now time.Time) (time.Duration, bool) {
	h := strings.TrimSpace(resp.Header.Get("Retry-After"))
	switch resp.StatusCode {
	case http.StatusTooManyRequests:
		if h == "" {
			return time.Second, true
		}
	case http.StatusServiceUnavailable:
		if h == "" {
			return 0, false
		}
	default:
		return 0, false
	}
	if n, err := strconv.ParseUint(h, 10, 32); err == nil {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return time.Second, true
}
