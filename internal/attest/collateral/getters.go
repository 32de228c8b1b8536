package collateral

import (
	"context"
	"errors"

	tdxtrust "github.com/google/go-tdx-guest/verify/trust"
)

// TDXGetter adapts a source to go-tdx-guest's getter interface, which
// also wants the headers (Intel's issuer chains travel in them).
func TDXGetter(s Source) tdxtrust.HTTPSGetter { return tdxGetter{s} }

type tdxGetter struct{ s Source }

var _ tdxtrust.ContextHTTPSGetter = tdxGetter{}

func (g tdxGetter) Get(url string) (map[string][]string, []byte, error) {
	return g.GetContext(context.Background(), url)
}

func (g tdxGetter) GetContext(ctx context.Context, url string) (map[string][]string, []byte, error) {
	r, err := g.s.Get(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	return r.Header, r.Body, nil
}

// Map is a source of fixed documents by URL, for tests and for the
// simulation CA's in-memory collateral. Missing URLs are ErrNotFound.
type Map map[string]*Response

var _ Source = Map(nil)

// Get returns the document stored for url.
func (m Map) Get(_ context.Context, url string) (*Response, error) {
	if r, ok := m[url]; ok {
		return r, nil
	}
	return nil, &StatusError{URL: url, Status: 404}
}

// Sources tries each source in turn and returns the first document found;
// a source that does not have it (ErrNotFound) passes to the next.
type Sources []Source

var _ Source = Sources(nil)

// Get returns the document from the first source that has it.
func (s Sources) Get(ctx context.Context, url string) (*Response, error) {
	var err error = &StatusError{URL: url, Status: 404}
	for _, src := range s {
		var r *Response
		if r, err = src.Get(ctx, url); err == nil || !errors.Is(err, ErrNotFound) {
			return r, err
		}
	}
	return nil, err
}
