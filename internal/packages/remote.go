package packages

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/retry"

	"github.com/castellan-dev/castellan/internal/workload"
)

// repository opens a registry repository with the store's client.
func (s *Store) repository(ref Ref) (*remote.Repository, error) {
	repo, err := remote.NewRepository(ref.Registry + "/" + ref.Repository)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	repo.PlainHTTP = s.PlainHTTP
	client := s.Client
	if client == nil {
		// Credentials come from the Docker config file ($DOCKER_CONFIG or
		// ~/.docker/config.json) and the credential helpers it names.
		cs, err := credentials.NewStoreFromDocker(credentials.StoreOptions{})
		if err != nil {
			return nil, fmt.Errorf("registry credentials: %w", err)
		}
		// Retries above the stall watchdog: each attempt has its own, and
		// a stalled attempt is not retried (see stallTransport).
		base := http.DefaultTransport.(*http.Transport).Clone()
		client = &auth.Client{
			Client:     &http.Client{Transport: retry.NewTransport(&stallTransport{base: base, limit: s.stallLimit()})},
			Cache:      auth.NewCache(),
			Credential: credentials.Credential(cs),
			Header:     http.Header{"User-Agent": {"castellan"}},
		}
	}
	repo.Client = client
	return repo, nil
}

// Pull fetches a package from a registry with every check of Fetch, stores
// it in the local store and tags it there with its reference. A tag that
// now names another digest than the store recorded is reported through
// Warnf ("tag moved from X to Y").
func (s *Store) Pull(ctx context.Context, reference string) (*workload.Artifact, error) {
	ref, err := ParseRef(reference)
	if err != nil {
		return nil, err
	}
	if !ref.Remote() {
		return nil, fmt.Errorf("pull %s: not a registry reference (want REGISTRY/REPOSITORY:TAG or @sha256:...)", reference)
	}
	return s.pull(ctx, ref)
}

func (s *Store) pull(ctx context.Context, ref Ref) (*workload.Artifact, error) {
	art, err := s.fetchRemote(ctx, ref)
	if err != nil {
		return nil, err
	}
	if err := s.put(ctx, art); err != nil {
		return nil, err
	}
	if ref.Tag != "" {
		prev, err := s.Tag(art.Digest, ref.Name())
		if err != nil {
			return nil, err
		}
		if prev != "" {
			s.warnf("%s: tag moved from %s to %s", ref.Name(), prev, art.Digest)
		}
	}
	return art, nil
}

// fetchRemote resolves and fetches a package from its registry, verified,
// without storing it.
func (s *Store) fetchRemote(ctx context.Context, ref Ref) (*workload.Artifact, error) {
	repo, err := s.repository(ref)
	if err != nil {
		return nil, err
	}
	from := "registry " + ref.Registry
	desc, err := repo.Resolve(ctx, ref.reference())
	if err != nil {
		return nil, fmt.Errorf("%s: resolve in %s: %w", ref, from, err)
	}
	return s.fetchArtifact(ctx, repo, from, ref, desc)
}

// Push sends the package that src names in the local store (or an
// oci-layout folder) to the registry reference dst; dst "" means src,
// which must then be a registry reference (as built with -t). Every blob
// is verified before it leaves, and dst is tagged in the local store too.
func (s *Store) Push(ctx context.Context, src, dst string) (*workload.Artifact, error) {
	if dst == "" {
		dst = src
	}
	dref, err := ParseRef(dst)
	if err != nil {
		return nil, err
	}
	if !dref.Remote() {
		return nil, fmt.Errorf("push to %s: not a registry reference (want REGISTRY/REPOSITORY:TAG)", dst)
	}
	art, err := s.fetchLocal(ctx, src)
	if err != nil {
		return nil, err
	}
	if dref.Digest != "" && dref.Digest != art.Digest {
		return nil, fmt.Errorf("push to %s: the package's digest is %s: %w", dst, art.Digest, ErrMismatch)
	}
	repo, err := s.repository(dref)
	if err != nil {
		return nil, err
	}
	blobs := artifactBlobs(art)
	for _, b := range blobs {
		ok, err := repo.Exists(ctx, b.desc)
		if err != nil {
			return nil, fmt.Errorf("push %s: %s %s: %w", dst, b.what, b.desc.Digest, err)
		}
		if ok {
			continue
		}
		bar := s.newBar(b.what, b.desc)
		if err := repo.Push(ctx, b.desc, bar.wrap(bytes.NewReader(b.data))); err != nil {
			bar.done(false)
			return nil, fmt.Errorf("push %s: %s %s: %w", dst, b.what, b.desc.Digest, err)
		}
		bar.done(true)
	}
	m := bytes.NewReader(art.Manifest)
	if dref.Tag != "" {
		err = repo.PushReference(ctx, art.ManifestDesc, m, dref.Tag)
	} else {
		err = repo.Push(ctx, art.ManifestDesc, m)
	}
	if err != nil {
		return nil, fmt.Errorf("push %s: manifest %s: %w", dst, art.Digest, err)
	}
	if dref.Tag != "" {
		if _, err := s.Tag(art.Digest, dref.Name()); err != nil {
			return nil, err
		}
	}
	return art, nil
}
