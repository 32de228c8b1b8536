package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/castellan-dev/castellan/internal/workload"
)

// Media types of Wasm layers the shim runs: a castellan package's, the
// Wasm OCI artifact's, and runwasi's.
const (
	MediaTypeWasmComponentLayer = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm"
	MediaTypeWasmModuleLayer    = "application/vnd.w3c.wasm.module.v1+wasm"
)

func isWasmLayer(mt string) bool {
	switch mt {
	case workload.MediaTypeWasm, MediaTypeWasmComponentLayer, MediaTypeWasmModuleLayer:
		return true
	}
	return false
}

// maxManifest bounds an image manifest read from containerd.
const maxManifest = 4 << 20

// imageSource reads a container's image from containerd's content store
// (gRPC on containerd's socket), as runwasi does: a castellan package or
// an image with Wasm layers is not unpacked into a root filesystem.
type imageSource struct {
	containerd, namespace, id string
	imageName                 string
}

// wasmLayers returns the Wasm layer and the workload config layer of the
// container's image, or nil when the image has no Wasm layer (or its
// content is not in the store: containerd before 1.6.25 and 1.7.7 does
// not keep layers of media types it does not know).
func (s *imageSource) wasmLayers(ctx context.Context) (wasm, cfg []byte, source string, err error) {
	if s.containerd == "" {
		return nil, nil, "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+s.containerd, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, "", fmt.Errorf("containerd at %s: %w", s.containerd, err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-namespace", s.namespace)
	c, err := containersapi.NewContainersClient(conn).Get(ctx, &containersapi.GetContainerRequest{ID: s.id})
	if err != nil {
		return nil, nil, "", fmt.Errorf("containerd: container %s: %w", s.id, err)
	}
	s.imageName = c.Container.Image
	if s.imageName == "" {
		return nil, nil, "", nil
	}
	img, err := imagesapi.NewImagesClient(conn).Get(ctx, &imagesapi.GetImageRequest{Name: s.imageName})
	if err != nil {
		return nil, nil, "", fmt.Errorf("containerd: image %s: %w", s.imageName, err)
	}
	content := contentapi.NewContentClient(conn)
	read := func(dgst string, max int64) ([]byte, error) {
		return readContent(ctx, content, dgst, max)
	}
	wasm, cfg, err = imageLayers(img.Image.Target.Digest, read)
	if err != nil || wasm == nil {
		return nil, nil, "", wrapImage(s.imageName, err)
	}
	return wasm, cfg, "image " + s.imageName + " (Wasm layer)", nil
}

func wrapImage(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("image %s: %w", name, err)
}

// imageLayers reads the manifest at target and returns its Wasm layer and
// workload config layer; nil when it has no Wasm layer. read returns a
// blob checked against its digest.
func imageLayers(target string, read func(dgst string, max int64) ([]byte, error)) (wasm, cfg []byte, err error) {
	mb, err := read(target, maxManifest)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	m, err := pickManifest(mb, read)
	if err != nil || m == nil {
		return nil, nil, err
	}
	var wasmDesc, cfgDesc *ocispec.Descriptor
	for i, l := range m.Layers {
		switch {
		case isWasmLayer(l.MediaType):
			if wasmDesc != nil {
				return nil, nil, errors.New("more than one Wasm layer")
			}
			wasmDesc = &m.Layers[i]
		case l.MediaType == workload.MediaTypeTOML:
			if cfgDesc != nil {
				return nil, nil, errors.New("more than one workload config layer")
			}
			cfgDesc = &m.Layers[i]
		}
	}
	if wasmDesc == nil {
		return nil, nil, nil
	}
	if wasm, err = read(wasmDesc.Digest.String(), maxWasm); err != nil {
		return nil, nil, fmt.Errorf("wasm layer %s (containerd before 1.6.25 and 1.7.7 does not keep such layers): %w", wasmDesc.Digest, err)
	}
	if cfgDesc != nil {
		if cfg, err = read(cfgDesc.Digest.String(), maxConfig); err != nil {
			return nil, nil, fmt.Errorf("config layer %s: %w", cfgDesc.Digest, err)
		}
	}
	return wasm, cfg, nil
}

// pickManifest decodes an image manifest, or picks the linux/wasm (or
// wasi/wasm) entry of an index.
func pickManifest(b []byte, read func(string, int64) ([]byte, error)) (*ocispec.Manifest, error) {
	var probe struct {
		MediaType string               `json:"mediaType"`
		Manifests []ocispec.Descriptor `json:"manifests"`
		Layers    []ocispec.Descriptor `json:"layers"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if probe.Manifests != nil {
		for _, d := range probe.Manifests {
			if d.Platform != nil && d.Platform.Architecture == "wasm" {
				mb, err := read(d.Digest.String(), maxManifest)
				if err != nil {
					return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
				}
				var m ocispec.Manifest
				if err := json.Unmarshal(mb, &m); err != nil {
					return nil, fmt.Errorf("manifest %s: %w", d.Digest, err)
				}
				return &m, nil
			}
		}
		return nil, nil
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return &m, nil
}

// readContent reads one blob and checks its digest.
func readContent(ctx context.Context, c contentapi.ContentClient, dgst string, max int64) ([]byte, error) {
	d, err := digest.Parse(dgst)
	if err != nil {
		return nil, err
	}
	info, err := c.Info(ctx, &contentapi.InfoRequest{Digest: dgst})
	if err != nil {
		return nil, err
	}
	if info.Info.Size > max {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", dgst, info.Info.Size, max)
	}
	st, err := c.Read(ctx, &contentapi.ReadContentRequest{Digest: dgst})
	if err != nil {
		return nil, err
	}
	var buf []byte
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		buf = append(buf, r.Data...)
		if int64(len(buf)) > max {
			return nil, fmt.Errorf("%s: more than %d bytes", dgst, max)
		}
	}
	if d.Algorithm().FromBytes(buf) != d {
		return nil, fmt.Errorf("%s: content does not match its digest", dgst)
	}
	return buf, nil
}
