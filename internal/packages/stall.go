package packages

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// DefaultStallTimeout is how long a registry connection may make no
// progress (no connection, no response headers, no byte of a body either
// way) before it is abandoned.
const DefaultStallTimeout = 30 * time.Second

// ErrStalled: a registry connection made no progress for the stall limit.
var ErrStalled = errors.New("registry connection stalled")

// stallTransport abandons a round trip that makes no progress for limit:
// one watchdog per request, reset by every byte of the request body the
// transport takes, by the response headers and by every byte of the
// response body read. A total deadline would cut off a large blob on a
// slow but working link; this ends only a link that stopped.
//
// Its errors are not net.Error timeouts, so oras's retry transport above it
// does not retry a stalled request (a registry that stalls once usually
// stalls again, and each retry would cost another limit).
type stallTransport struct {
	base  http.RoundTripper
	limit time.Duration
}

// stallError says which registry stalled, in what, and the limit.
type stallError struct {
	registry, what string
	limit          time.Duration
}

func (e *stallError) Error() string {
	return fmt.Sprintf("registry %s made no progress for %v (the stall limit) while %s", e.registry, e.limit, e.what)
}

func (e *stallError) Unwrap() error { return ErrStalled }

// watchdog cancels a request's context when it is not fed for limit.
type watchdog struct {
	mu     sync.Mutex
	timer  *time.Timer
	fired  bool
	what   string // what the request was doing when it fired
	cancel context.CancelFunc
	limit  time.Duration
}

func (w *watchdog) feed(what string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fired {
		return
	}
	w.what = what
	w.timer.Reset(w.limit)
}

func (w *watchdog) stop() {
	w.mu.Lock()
	w.timer.Stop()
	w.mu.Unlock()
	w.cancel()
}

// stalled returns what the request was doing when the watchdog fired, or
// "" if it has not.
func (w *watchdog) stalled() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.fired {
		return ""
	}
	return w.what
}

func (t *stallTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	w := &watchdog{cancel: cancel, limit: t.limit}
	target := req.Method + " " + req.URL.Path
	w.what = "connecting for " + target
	w.timer = time.AfterFunc(t.limit, func() {
		w.mu.Lock()
		w.fired = true
		w.mu.Unlock()
		cancel()
	})
	fail := func(err error) error {
		if what := w.stalled(); what != "" {
			return &stallError{registry: req.URL.Host, what: what, limit: t.limit}
		}
		return err
	}
	r2 := req.Clone(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		r2.Body = &progressBody{rc: req.Body, w: w, what: "sending the body of " + target, atEOF: "waiting for the response to " + target}
	}
	w.feed("waiting for the response to " + target)
	resp, err := t.base.RoundTrip(r2)
	if err != nil {
		w.stop()
		return nil, fail(err)
	}
	w.feed("reading the body of " + target)
	resp.Body = &progressBody{rc: resp.Body, w: w, what: "reading the body of " + target, fail: fail, closeStops: true}
	return resp, nil
}

// progressBody feeds the watchdog on every byte that passes.
type progressBody struct {
	rc         io.ReadCloser
	w          *watchdog
	what       string
	n          int64
	atEOF      string // what the request does once the body is read
	fail       func(error) error
	closeStops bool
}

func (b *progressBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.n += int64(n)
		b.w.feed(fmt.Sprintf("%s (after %d bytes)", b.what, b.n))
	}
	if err == io.EOF && b.atEOF != "" {
		b.w.feed(b.atEOF)
	}
	if err != nil && err != io.EOF && b.fail != nil {
		err = b.fail(err)
	}
	return n, err
}

func (b *progressBody) Close() error {
	err := b.rc.Close()
	if b.closeStops {
		b.w.stop()
	}
	return err
}
