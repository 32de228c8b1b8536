//go:build unix

package packages

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/workload"
)

// TestLayoutRefusesSpecialFiles: an oci-layout folder from someone else
// whose index.json or blobs are FIFOs, or whose files are links to an
// endless device, is refused with an error that names the file; nothing
// blocks and nothing is read without end.
func TestLayoutRefusesSpecialFiles(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name  string
		plant func(t *testing.T, dir string, art *workload.Artifact)
	}{
		{"index.json is a FIFO", func(t *testing.T, dir string, _ *workload.Artifact) {
			mkfifo(t, filepath.Join(dir, "index.json"))
		}},
		{"wasm blob is a FIFO", func(t *testing.T, dir string, art *workload.Artifact) {
			mkfifo(t, filepath.Join(dir, "blobs", "sha256", art.WasmDesc.Digest.Encoded()))
		}},
		{"manifest is a FIFO", func(t *testing.T, dir string, art *workload.Artifact) {
			mkfifo(t, filepath.Join(dir, "blobs", "sha256", art.Digest.Encoded()))
		}},
		{"oci-layout is a FIFO", func(t *testing.T, dir string, _ *workload.Artifact) {
			mkfifo(t, filepath.Join(dir, "oci-layout"))
		}},
		{"oci-layout is /dev/zero", func(t *testing.T, dir string, _ *workload.Artifact) {
			relink(t, "/dev/zero", filepath.Join(dir, "oci-layout"))
		}},
		{"wasm blob is /dev/zero", func(t *testing.T, dir string, art *workload.Artifact) {
			relink(t, "/dev/zero", filepath.Join(dir, "blobs", "sha256", art.WasmDesc.Digest.Encoded()))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "layout")
			art, err := WriteLayout(dir, module(70), nil, "app:1")
			if err != nil {
				t.Fatal(err)
			}
			c.plant(t, dir, art)
			done := make(chan error, 1)
			go func() {
				_, err := newStore(t, Options{}).Fetch(ctx, LayoutPrefix+dir+"@"+art.Digest.String())
				done <- err
			}()
			select {
			case err = <-done:
			case <-time.After(2 * time.Minute): // catches a hang only
				t.Fatal("the fetch blocked on a special file")
			}
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Fatalf("got %v, want a refusal of the special file", err)
			}
		})
	}
}

func mkfifo(t *testing.T, path string) {
	t.Helper()
	os.Remove(path)
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
}

func relink(t *testing.T, target, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}
