package packages

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"

	"github.com/castellan-dev/castellan/internal/regularfile"
)

// maxLayoutFile bounds the oci-layout file of an image layout (a few
// dozen bytes when well formed).
const maxLayoutFile = 4 << 10

// openRegular opens path for reading only if it is a regular file (a
// symbolic link to one is fine): an oci-layout folder may come from
// anyone, and a FIFO or device planted there is refused before it is
// opened (regularfile).
func openRegular(path string) (*os.File, error) {
	f, _, err := regularfile.Open(regularfile.OS, path)
	if errors.Is(err, regularfile.ErrNotRegular) {
		return nil, fmt.Errorf("%s is %w", path, err)
	}
	return f, err
}

// readRegular reads a regular file of at most max bytes.
func readRegular(path string, max int64) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// dirBlobs reads the blobs of an image-layout folder, regular files only
// (openRegular). The caller verifies what it reads against the digest.
type dirBlobs struct{ dir string }

var _ content.Fetcher = dirBlobs{}

func (b dirBlobs) Fetch(_ context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %v: %w", desc.Digest, err, errdef.ErrInvalidDigest)
	}
	f, err := openRegular(filepath.Join(b.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded()))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", desc.Digest, errdef.ErrNotFound)
	}
	return f, err
}
