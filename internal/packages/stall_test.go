package packages

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRegistryStall: a registry that stops sending (a blob trickled then
// stopped, headers never sent) or never answers a push is abandoned after
// the stall limit, without retries, with an error that names the registry,
// the request and the limit; a blob that trickles slowly but steadily, for
// longer than the limit in all, still arrives.
func TestRegistryStall(t *testing.T) {
	const limit = 2 * time.Second
	reg := newRegistry(t)
	wasm := append(module(40), make([]byte, 28)...) // 40 bytes
	art := publish(t, reg.host+"/t/stall:v1", wasm, nil)
	wasmPath := "/blobs/" + art.WasmDesc.Digest.String()
	setIntercept := func(f func(w http.ResponseWriter, r *http.Request) bool) {
		reg.mu.Lock()
		reg.intercept = f
		reg.mu.Unlock()
	}
	t.Cleanup(func() { setIntercept(nil) })
	// trickle serves the Wasm blob one byte per gap; stopAfter >= 0 stops
	// sending after that many bytes until the client hangs up.
	trickle := func(calls *atomic.Int32, gap time.Duration, stopAfter int) func(w http.ResponseWriter, r *http.Request) bool {
		return func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, wasmPath) {
				return false
			}
			calls.Add(1)
			w.Header().Set("Content-Length", strconv.Itoa(len(wasm)))
			w.WriteHeader(http.StatusOK)
			for i, b := range wasm {
				if i == stopAfter {
					<-r.Context().Done()
					return true
				}
				w.Write([]byte{b})
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return true
				case <-time.After(gap):
				}
			}
			return true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // catches a hang only
	defer cancel()

	t.Run("body stops", func(t *testing.T) {
		var calls atomic.Int32
		setIntercept(trickle(&calls, 0, 5))
		_, err := newStore(t, Options{StallTimeout: limit}).Pull(ctx, reg.host+"/t/stall:v1")
		want := "registry " + reg.host + " made no progress for 2s (the stall limit) while reading the body of GET /v2/t/stall" + wasmPath + " (after 5 bytes)"
		if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v\nwant ErrStalled and %q", err, want)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("the stalled blob was asked for %d times, want once (no retries)", n)
		}
	})
	t.Run("slow but steady body", func(t *testing.T) {
		var calls atomic.Int32
		// A byte every 150ms, 6s in all, under a 5s limit: the margin
		// (30x the gap) is for a loaded machine, where the trickling
		// goroutine may be late.
		setIntercept(trickle(&calls, 150*time.Millisecond, -1))
		got, err := newStore(t, Options{StallTimeout: 5 * time.Second}).Pull(ctx, reg.host+"/t/stall:v1")
		if err != nil {
			t.Fatalf("a steady trickle was abandoned: %v", err)
		}
		if got.Digest != art.Digest {
			t.Errorf("digest %s, want %s", got.Digest, art.Digest)
		}
	})
	t.Run("no headers", func(t *testing.T) {
		var calls atomic.Int32
		setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			calls.Add(1)
			<-r.Context().Done()
			return true
		})
		_, err := newStore(t, Options{StallTimeout: limit}).Pull(ctx, reg.host+"/t/stall:v1")
		want := "registry " + reg.host + " made no progress for 2s (the stall limit) while waiting for the response to "
		if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "/v2/t/stall/manifests/v1") {
			t.Fatalf("got %v\nwant ErrStalled and %q", err, want)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("the manifest was asked for %d times, want once (no retries)", n)
		}
	})
	t.Run("push unanswered", func(t *testing.T) {
		setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				return false // blobs are checked with HEAD first
			}
			<-r.Context().Done()
			return true
		})
		s := newStore(t, Options{StallTimeout: limit})
		a, err := s.Build(module(41), nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Tag(a.Digest, reg.host+"/t/stallpush:v1"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Push(ctx, reg.host+"/t/stallpush:v1", "")
		want := "registry " + reg.host + " made no progress for 2s (the stall limit) while waiting for the response to POST /v2/t/stallpush/blobs/uploads/"
		if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v\nwant ErrStalled and %q", err, want)
		}
	})
}
