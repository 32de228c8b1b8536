// Package ociimage builds castellan's container image without Docker: one
// layer holding the static castellan binary and a CA certificate bundle,
// nothing else, written as an OCI image layout with go-containerregistry.
// Every byte is fixed by the two inputs (file modes, owners and times in
// the tar are constants; the config has no dates and no history), so the
// same binary and bundle always give the same image digest, which is what
// the Kubernetes manifests pin.
package ociimage

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/castellan-dev/castellan/internal/keepimage"
)

// Paths in the image.
const (
	BinaryPath = "/usr/local/bin/castellan"
	CACertPath = "/etc/ssl/certs/ca-certificates.crt"
)

// RefAnnotation names the image in the layout's index.
const RefAnnotation = "org.opencontainers.image.ref.name"

// maxCACerts bounds the CA bundle (Debian's is about 200 KiB).
const maxCACerts = 4 << 20

// Build makes the image of binary (a static linux/amd64 castellan) with
// the PEM bundle caCerts.
func Build(binary, caCerts []byte) (v1.Image, error) {
	if err := keepimage.CheckStatic(binary); err != nil {
		return nil, fmt.Errorf("castellan binary: %w", err)
	}
	if len(caCerts) == 0 || len(caCerts) > maxCACerts || !bytes.Contains(caCerts, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, errors.New("CA certificates: not a PEM bundle of at most 4 MiB")
	}
	layerTar, err := layerBytes(binary, caCerts)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer}); err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{}
	cf.History = nil
	cf.Config = v1.Config{
		Entrypoint: []string{BinaryPath},
		Env:        []string{"SSL_CERT_FILE=" + CACertPath},
		User:       "0:0",
	}
	return mutate.ConfigFile(img, cf)
}

// layerBytes is the layer's tar: the folders, the bundle and the binary,
// in that order, with fixed owners, modes and times.
func layerBytes(binary, caCerts []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	epoch := time.Unix(0, 0).UTC()
	for _, d := range []string{"etc/", "etc/ssl/", "etc/ssl/certs/", "usr/", "usr/local/", "usr/local/bin/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
	}
	for _, f := range []struct {
		name string
		mode int64
		b    []byte
	}{{CACertPath[1:], 0o644, caCerts}, {BinaryPath[1:], 0o755, binary}} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.b)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteLayout writes img to the OCI image layout dir (created; it must not
// exist or be empty), named ref in its index, and returns its digest.
func WriteLayout(dir, ref string, img v1.Image) (v1.Hash, error) {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return v1.Hash{}, fmt.Errorf("%s: not empty", dir)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	var opts []layout.Option
	if ref != "" {
		opts = append(opts, layout.WithAnnotations(map[string]string{RefAnnotation: ref}))
	}
	if err := p.AppendImage(img, opts...); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}
