package collateral

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/atomicfile"
)

// DefaultMaxAge is how long a cached document that can change (a CRL, a
// TCB info, a QE identity) is used before it is fetched again. Each
// carries its own next-update time, which the verifier checks; refetching
// sooner picks up a TCB recovery or a revocation sooner.
const DefaultMaxAge = 12 * time.Hour

// Cache is a folder of collateral documents in front of an upstream
// source. With no upstream it is an offline folder: documents are read
// from it and never fetched, whatever their age.
//
// A document is fetched again when it is older than its maximum age; if
// that fetch fails the cached one is used (the verifier then refuses it
// once its own next update has passed). Documents that never change (AMD
// VCEK certificates, one per chip and TCB; URLs under /vcek/ or /vlek/
// without "crl") are kept for ever. Concurrent Gets of one URL fetch it
// once. Files are replaced atomically, so a crash never leaves half a
// document.
type Cache struct {
	Dir      string
	Upstream Source // nil: offline
	// MaxAge overrides DefaultMaxAge for documents that can change.
	MaxAge time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time

	mu       sync.Mutex
	inflight map[string]*call
}

type call struct {
	done chan struct{}
	r    *Response
	err  error
}

var _ Source = (*Cache)(nil)

// Offline returns a source that reads the collateral folder dir and never
// fetches.
func Offline(dir string) *Cache { return &Cache{Dir: dir} }

func (c *Cache) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// immutable reports whether the document at name never changes: an AMD
// VCEK or VLEK certificate, if body is one (an error page a server sent
// with status 200 is not kept for ever).
func immutable(name string, body []byte) bool {
	if !(strings.Contains(name, "/vcek/") || strings.Contains(name, "/vlek/")) || strings.HasSuffix(name, "/crl") {
		return false
	}
	_, err := x509.ParseCertificate(body)
	return err == nil
}

type meta struct {
	Header  http.Header `json:"header,omitempty"`
	Fetched time.Time   `json:"fetched"`
}

// Get returns the document at url from the folder, fetching it first if it
// is missing or too old and there is an upstream.
func (c *Cache) Get(ctx context.Context, url string) (*Response, error) {
	name, err := FileName(url)
	if err != nil {
		return nil, err
	}
	cached, rerr := c.read(name)
	if c.Upstream == nil {
		if rerr != nil {
			if errors.Is(rerr, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s is not in the offline collateral folder %s (file %s): %w", url, c.Dir, name, ErrNotFound)
			}
			return nil, fmt.Errorf("offline collateral %s: %w", url, rerr)
		}
		return cached, nil
	}
	maxAge := c.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	if rerr == nil && (immutable(name, cached.Body) || c.now().Sub(cached.Fetched) < maxAge) {
		return cached, nil
	}
	r, err := c.fetch(ctx, url, name)
	if err != nil {
		if rerr == nil && !errors.Is(err, ErrNotFound) {
			return cached, nil // stale, but the verifier judges its freshness
		}
		return nil, err
	}
	return r, nil
}

// fetch gets url from upstream once for all concurrent callers and stores it.
func (c *Cache) fetch(ctx context.Context, url, name string) (*Response, error) {
	c.mu.Lock()
	if c.inflight == nil {
		c.inflight = map[string]*call{}
	}
	if cl, ok := c.inflight[name]; ok {
		c.mu.Unlock()
		select {
		case <-cl.done:
			return cl.r, cl.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	cl := &call{done: make(chan struct{})}
	c.inflight[name] = cl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.inflight, name)
		c.mu.Unlock()
		close(cl.done)
	}()
	cl.r, cl.err = c.Upstream.Get(ctx, url)
	if cl.err != nil {
		return nil, cl.err
	}
	if cl.r.Fetched.IsZero() {
		cl.r.Fetched = c.now()
	}
	// A cache that cannot be written costs only a fetch next time; the
	// document itself is good.
	_ = c.write(name, cl.r)
	return cl.r, nil
}

func headerFile(name string) string {
	return filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".headers")
}

func (c *Cache) read(name string) (*Response, error) {
	p := filepath.Join(c.Dir, filepath.FromSlash(name))
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > MaxSize {
		return nil, fmt.Errorf("%s: not a regular file of at most %d bytes", p, MaxSize)
	}
	body, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	r := &Response{Body: body, Fetched: fi.ModTime()}
	hb, err := os.ReadFile(filepath.Join(c.Dir, headerFile(filepath.FromSlash(name))))
	if err == nil {
		var m meta
		if err := json.Unmarshal(hb, &m); err != nil {
			return nil, fmt.Errorf("%s: %w", headerFile(name), err)
		}
		r.Header = m.Header
		if !m.Fetched.IsZero() {
			r.Fetched = m.Fetched
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	return r, nil
}

// write stores r under name: the headers first, then the body, each
// replaced atomically.
func (c *Cache) write(name string, r *Response) error {
	p := filepath.Join(c.Dir, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	hb, err := json.Marshal(meta{Header: r.Header, Fetched: r.Fetched})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(c.Dir, headerFile(filepath.FromSlash(name))), hb, 0o644); err != nil {
		return err
	}
	return atomicfile.Write(p, r.Body, 0o644)
}

// Put stores a document in the folder dir as if fetched from url at
// fetched, with its headers: how a collateral folder is filled by other
// means (the simulation CA writes its own collateral with it).
func Put(dir, url string, r *Response) error {
	name, err := FileName(url)
	if err != nil {
		return err
	}
	return (&Cache{Dir: dir}).write(name, r)
}
