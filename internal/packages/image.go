package packages

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	digest "github.com/opencontainers/go-digest"
	"oras.land/oras-go/v2"
	"oras.land/oras-go/v2/content/oci"
)

// PushImage copies the image that name tags in the OCI image layout dir
// (castellan's container image, internal/ociimage) to the registry
// reference dst with the registry client a package push uses
// (credentials, --plain-http). It returns the image's digest; every blob
// is checked against its digest on the way.
func PushImage(ctx context.Context, opts Options, dir, name, dst string) (digest.Digest, error) {
	dref, err := ParseRef(dst)
	if err != nil {
		return "", err
	}
	if !dref.Remote() || dref.Tag == "" {
		return "", fmt.Errorf("push to %s: not a registry reference with a tag (want REGISTRY/REPOSITORY:TAG)", dst)
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		return "", fmt.Errorf("%s: not an OCI image layout (no oci-layout file)", dir)
	}
	src, err := oci.NewWithContext(ctx, dir)
	if err != nil {
		return "", fmt.Errorf("%s: %w", dir, err)
	}
	s := &Store{Options: opts}
	repo, err := s.repository(dref)
	if err != nil {
		return "", err
	}
	desc, err := oras.Copy(ctx, src, name, repo, dref.Tag, oras.DefaultCopyOptions)
	if err != nil {
		return "", fmt.Errorf("push %s to %s: %w", dir, dst, fromRegistry(err))
	}
	return desc.Digest, nil
}
