package ociimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/castellan-dev/castellan/internal/ociimage"
	"github.com/castellan-dev/castellan/internal/packages"
)

// staticBinary builds a tiny static Go program (a stand-in for castellan:
// the image's rules do not depend on which static binary it holds).
func staticBinary(t *testing.T, msg string) []byte {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n\ngo 1.22\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() { println(\""+msg+"\") }\n"), 0o644)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-buildid=", "-o", "bin")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOTOOLCHAIN=local", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const certs = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func TestDeterministic(t *testing.T) {
	bin := staticBinary(t, "one")
	digest := func(bin []byte, ca string) string {
		img, err := ociimage.Build(bin, []byte(ca))
		if err != nil {
			t.Fatal(err)
		}
		d, err := ociimage.WriteLayout(t.TempDir(), "castellan:test", img)
		if err != nil {
			t.Fatal(err)
		}
		return d.String()
	}
	a, b := digest(bin, certs), digest(bin, certs)
	if a != b {
		t.Fatalf("same inputs, digests %s and %s", a, b)
	}
	if c := digest(staticBinary(t, "two"), certs); c == a {
		t.Errorf("another binary gave the same digest %s", c)
	}
	if c := digest(bin, certs+certs); c == a {
		t.Errorf("other CA certificates gave the same digest %s", c)
	}
}

func TestContents(t *testing.T) {
	bin := staticBinary(t, "one")
	img, err := ociimage.Build(bin, []byte(certs))
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	if cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != ociimage.BinaryPath ||
		!cf.Created.IsZero() || len(cf.History) != 0 {
		t.Errorf("config: %+v", cf)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, _ := layers[0].Uncompressed()
	defer rc.Close()
	tr := tar.NewReader(rc)
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d, time %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		if h.Typeflag == tar.TypeReg {
			files["/"+h.Name], _ = io.ReadAll(tr)
		} else if h.Typeflag != tar.TypeDir {
			t.Errorf("%s: type %c, want only folders and files", h.Name, h.Typeflag)
		}
	}
	if len(files) != 2 || !bytes.Equal(files[ociimage.BinaryPath], bin) || string(files[ociimage.CACertPath]) != certs {
		t.Errorf("files %v, want the binary and the CA bundle only", len(files))
	}
}

func TestRefusals(t *testing.T) {
	bin := staticBinary(t, "one")
	sh, _ := os.ReadFile("/bin/sh") // dynamically linked on Debian
	for _, tc := range []struct {
		name    string
		bin, ca []byte
		err     string
	}{
		{"not ELF", []byte("#!/bin/sh\n"), []byte(certs), "castellan binary: not an ELF executable"},
		{"dynamic", sh, []byte(certs), "castellan binary: dynamically linked"},
		{"no certificates", bin, []byte("hello"), "CA certificates: not a PEM bundle"},
		{"empty certificates", bin, nil, "CA certificates: not a PEM bundle"},
	} {
		if tc.name == "dynamic" && len(sh) == 0 {
			continue
		}
		if _, err := ociimage.Build(tc.bin, tc.ca); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
	img, _ := ociimage.Build(bin, []byte(certs))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	if _, err := ociimage.WriteLayout(dir, "", img); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("writing into a non-empty folder: %v", err)
	}
}

func TestPush(t *testing.T) {
	img, err := ociimage.Build(staticBinary(t, "one"), []byte(certs))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "image")
	want, err := ociimage.WriteLayout(dir, "castellan:v1", img)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref := u.Host + "/castellan/castellan:v1"
	got, err := packages.PushImage(context.Background(), packages.Options{PlainHTTP: true}, dir, "castellan:v1", ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != want.String() {
		t.Errorf("pushed %s, want %s", got, want)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	desc, err := remote.Get(r)
	if err != nil || desc.Digest.String() != want.String() {
		t.Errorf("registry has %v (%v), want %s", desc, err, want)
	}
}
