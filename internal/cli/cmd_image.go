package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/ociimage"
	"github.com/castellan-dev/castellan/internal/packages"
)

var imageBuildCmd = &Command{
	Name:    "image build",
	Usage:   "image build -o DIR [--castellan FILE] [--ca-certs FILE] [-t NAME]",
	Summary: "build castellan's container image (an OCI image layout) without Docker",
	Help: `Writes an OCI image layout to DIR holding one image: the static castellan
binary at /usr/local/bin/castellan (its entrypoint) and the CA certificate
bundle at /etc/ssl/certs/ca-certificates.crt, nothing else. File owners,
modes and times and the config are fixed, so the same binary and bundle
always give the same image digest, printed on stdout; the Kubernetes
manifests (deploy/kubernetes) pin the image by that digest.

castellan is built from the source tree that holds the working folder
(reproducibly, as for 'castellan keep-image build'); --castellan FILE
takes a given static binary instead. The bundle is --ca-certs FILE, else
/etc/ssl/certs/ca-certificates.crt. -t names the image in the layout's
index (default castellan:latest); push it with 'castellan image push'.`,
}

var imagePushCmd = &Command{
	Name:    "image push",
	Usage:   "image push [--plain-http] DIR REGISTRY/REPOSITORY:TAG",
	Summary: "push the image 'castellan image build' wrote to a registry",
	Help: `Copies the image of the layout DIR to the registry with the credentials a
package push uses (the Docker config file and its helpers) and prints
its digest.`,
}

func init() {
	imageBuildCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(imageBuildCmd)
		out := fs.String("o", "", "the OCI image layout folder to write (new or empty)")
		bin := fs.String("castellan", "", "the static castellan binary (default: build it from source)")
		ca := fs.String("ca-certs", "/etc/ssl/certs/ca-certificates.crt", "the CA certificate bundle (PEM)")
		tag := fs.String("t", "castellan:latest", "the image's name in the layout's index")
		pos, status, ok := e.Parse(imageBuildCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("image build: takes no arguments, got %q", pos[0])
		}
		if *out == "" {
			return e.Usagef("image build: -o DIR is required")
		}
		certs, err := os.ReadFile(*ca)
		if err != nil {
			return e.Errorf("image build: --ca-certs: %v", err)
		}
		binary, code := imageBinary(e, *bin)
		if binary == nil {
			return code
		}
		img, err := ociimage.Build(binary, certs)
		if err != nil {
			return e.Errorf("image build: %v", err)
		}
		d, err := ociimage.WriteLayout(*out, *tag, img)
		if err != nil {
			return e.Errorf("image build: %s: %v", *out, err)
		}
		fmt.Fprintf(e.Stdout, "%s\n", d)
		return ExitOK
	}
	Register(imageBuildCmd)

	imagePushCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(imagePushCmd)
		plain := fs.Bool("plain-http", false, "talk to the registry over http, not https (for a local registry)")
		tag := fs.String("t", "castellan:latest", "the image's name in the layout's index")
		pos, status, ok := e.Parse(imagePushCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 2 {
			return e.Usagef("image push: want DIR and REGISTRY/REPOSITORY:TAG")
		}
		d, err := packages.PushImage(context.Background(), packages.Options{PlainHTTP: *plain}, pos[0], *tag, pos[1])
		if err != nil {
			return e.Errorf("image push: %v", err)
		}
		fmt.Fprintf(e.Stdout, "%s@%s\n", pos[1], d)
		return ExitOK
	}
	Register(imagePushCmd)
}

// imageBinary reads the given castellan binary, or builds one from the
// source tree of the working folder.
func imageBinary(e *Env, path string) ([]byte, int) {
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, e.Errorf("image build: --castellan: %v", err)
		}
		return b, ExitOK
	}
	wd, _ := os.Getwd()
	src, err := keepimage.FindSource(wd)
	if err != nil {
		return nil, e.ErrorWithHint(fmt.Errorf("image build: %w", err), "give --castellan FILE (a static build), or run from castellan's source")
	}
	tmp, err := os.MkdirTemp("", "castellan-image-")
	if err != nil {
		return nil, e.Errorf("image build: %v", err)
	}
	defer os.RemoveAll(tmp)
	e.Infof("building castellan from %s", src)
	out := filepath.Join(tmp, "castellan")
	if err := keepimage.BuildCastellan(context.Background(), src, out); err != nil {
		return nil, e.Errorf("image build: %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, e.Errorf("image build: %v", err)
	}
	return b, ExitOK
}
