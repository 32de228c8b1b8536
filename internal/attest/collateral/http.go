package collateral

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// HTTP fetches collateral from the vendors' servers. A failed fetch is
// retried with exponential backoff; an answer of 429 (AMD's KDS
// rate-limits) or 503 is retried after the server's Retry-After, when it
// gives one within MaxDelay. A 404 is not retried.
type HTTP struct {
	// Client does the requests; nil: a client with a 30-second timeout.
	Client *http.Client
	// Attempts is the number of tries per document; 0 means 4.
	Attempts int
	// FirstDelay is the wait after the first failure, doubling each time;
	// 0 means 1 second.
	FirstDelay time.Duration
	// MaxDelay bounds one wait, Retry-After included: a server asking for
	// a longer wait gets an error instead. 0 means 1 minute.
	MaxDelay time.Duration
	// Rewrite, if set, maps a vendor URL to the one fetched (a PCCS
	// instead of Intel's PCS, a mirror of AMD's KDS).
	Rewrite func(url string) string
	// sleep waits; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error
}

var _ Source = (*HTTP)(nil)

// PCCS returns a Rewrite that sends requests for Intel's PCS
// (https://api.trustedservices.intel.com/...) to a PCCS at base
// (e.g. https://pccs.example:8081), which serves the same paths.
func PCCS(base string) func(string) string {
	base = strings.TrimSuffix(base, "/")
	const pcs = "https://api.trustedservices.intel.com"
	return func(u string) string {
		if strings.HasPrefix(u, pcs+"/") {
			return base + strings.TrimPrefix(u, pcs)
		}
		return u
	}
}

// StatusError is a document the server refused to give.
type StatusError struct {
	URL        string
	Status     int
	RetryAfter time.Duration // as the server asked; 0 if it did not
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("%s: HTTP %d", e.URL, e.Status)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

func (e *StatusError) Unwrap() error {
	if e.Status == http.StatusNotFound {
		return ErrNotFound
	}
	return nil
}

// Get fetches url.
func (h *HTTP) Get(ctx context.Context, url string) (*Response, error) {
	if h.Rewrite != nil {
		url = h.Rewrite(url)
	}
	attempts, delay, maxDelay := h.Attempts, h.FirstDelay, h.MaxDelay
	if attempts <= 0 {
		attempts = 4
	}
	if delay <= 0 {
		delay = time.Second
	}
	if maxDelay <= 0 {
		maxDelay = time.Minute
	}
	sleep := h.sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	var err error
	for i := 0; i < attempts; i++ {
		var r *Response
		if r, err = h.once(ctx, url); err == nil {
			return r, nil
		}
		if i == attempts-1 || errors.Is(err, ErrNotFound) || ctx.Err() != nil {
			break
		}
		wait := delay
		var se *StatusError
		if errors.As(err, &se) && se.RetryAfter > 0 {
			if se.RetryAfter > maxDelay {
				return nil, fmt.Errorf("%w; not waiting longer than %s", err, maxDelay)
			}
			wait = se.RetryAfter
		}
		if wait > maxDelay {
			wait = maxDelay
		}
		if serr := sleep(ctx, wait); serr != nil {
			return nil, fmt.Errorf("%w (then %v)", err, serr)
		}
		delay *= 2
	}
	return nil, fmt.Errorf("after %d attempts: %w", attempts, err)
}

func (h *HTTP) once(ctx context.Context, url string) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	c := h.Client
	if c == nil {
		c = &http.Client{Timeout: 30 * time.Second}
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return nil, &StatusError{URL: url, Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%s: more than %d bytes", url, MaxSize)
	}
	return &Response{Header: keep(resp.Header), Body: b, Fetched: time.Now()}, nil
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, 7*24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
