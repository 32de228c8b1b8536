package packages

import (
	"bytes"
	"context"
	"fmt"
	"net/http"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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
		return nil, fmt.Errorf("%s: resolve in %s: %w", ref, from, fromRegistry(err))
	}
	return s.fetchArtifact(ctx, repo, from, ref, desc)
}

// Push sends the package that src names in the local store (or an
// oci-layout folder) to the registry reference dst; dst "" means src,
// which must then be a registry reference (as built with -t). Every blob
// is verified before it leaves, and dst is tagged in the local store too.
func (s *Store) Push(ctx context.Context, src, dst string) (*workload.Artifact, error) {
	art, dref, repo, err := s.pushTarget(ctx, src, dst)
	if err != nil {
		return nil, err
	}
	if dref.Digest != "" && dref.Digest != art.Digest {
		return nil, fmt.Errorf("push to %s: the package's digest is %s: %w", dref, art.Digest, ErrMismatch)
	}
	if err := s.pushManifest(ctx, repo, dref, artifactBlobs(art), art.ManifestDesc, art.Manifest); err != nil {
		return nil, err
	}
	if dref.Tag != "" {
		if _, err := s.Tag(art.Digest, dref.Name()); err != nil {
			return nil, err
		}
	}
	return art, nil
}

// PushImage sends the package that src names in the image form containerd
// runs (workload.Image: an OCI image config over the same layers) to dst,
// which needs a tag. It returns the artifact (whose digest is the
// workload's) and the image form (whose digest the registry knows the
// image by). The local store keeps the package as it is.
func (s *Store) PushImage(ctx context.Context, src, dst string) (*workload.Artifact, *workload.Image, error) {
	art, dref, repo, err := s.pushTarget(ctx, src, dst)
	if err != nil {
		return nil, nil, err
	}
	if dref.Tag == "" {
		return nil, nil, fmt.Errorf("push to %s: an image form is pushed to a tag (REGISTRY/REPOSITORY:TAG)", dref)
	}
	img, err := art.Image()
	if err != nil {
		return nil, nil, err
	}
	blobs := artifactBlobs(art)[1:] // the layers, not the artifact's config
	blobs = append(blobs, blob{"image config", img.ConfigDesc, img.Config})
	if err := s.pushManifest(ctx, repo, dref, blobs, img.ManifestDesc, img.Manifest); err != nil {
		return nil, nil, err
	}
	return art, img, nil
}

// pushTarget reads the package src names and opens the registry
// repository of dst ("" = src).
func (s *Store) pushTarget(ctx context.Context, src, dst string) (*workload.Artifact, Ref, *remote.Repository, error) {
	if dst == "" {
		dst = src
	}
	dref, err := ParseRef(dst)
	if err != nil {
		return nil, Ref{}, nil, err
	}
	if !dref.Remote() {
		return nil, Ref{}, nil, fmt.Errorf("push to %s: not a registry reference (want REGISTRY/REPOSITORY:TAG)", dst)
	}
	art, err := s.fetchLocal(ctx, src)
	if err != nil {
		return nil, Ref{}, nil, err
	}
	repo, err := s.repository(dref)
	if err != nil {
		return nil, Ref{}, nil, err
	}
	return art, dref, repo, nil
}

// pushManifest sends the blobs the registry lacks, then the manifest, by
// dref's tag (or by digest).
func (s *Store) pushManifest(ctx context.Context, repo *remote.Repository, dref Ref, blobs []blob, mdesc ocispec.Descriptor, manifest []byte) error {
	for _, b := range blobs {
		ok, err := repo.Exists(ctx, b.desc)
		if err != nil {
			return fmt.Errorf("push %s: %s %s: %w", dref, b.what, b.desc.Digest, fromRegistry(err))
		}
		if ok {
			continue
		}
		bar := s.newBar(b.what, b.desc)
		if err := repo.Push(ctx, b.desc, bar.wrap(bytes.NewReader(b.data))); err != nil {
			bar.done(false)
			return fmt.Errorf("push %s: %s %s: %w", dref, b.what, b.desc.Digest, fromRegistry(err))
		}
		bar.done(true)
	}
	var err error
	m := bytes.NewReader(manifest)
	if dref.Tag != "" {
		err = repo.PushReference(ctx, mdesc, m, dref.Tag)
	} else {
		err = repo.Push(ctx, mdesc, m)
	}
	if err != nil {
		return fmt.Errorf("push %s: manifest %s: %w", dref, mdesc.Digest, fromRegistry(err))
	}
	return nil
}
