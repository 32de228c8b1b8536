package testvectors

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFind(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	// The sha256 of "abc".
	v := Vector{Name: "v.bin", SHA256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", Source: "test"}
	if _, _, err := find(v, []string{a, b}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("absent: %v", err)
	}
	os.WriteFile(filepath.Join(b, "v.bin"), []byte("abc"), 0o644)
	got, p, err := find(v, []string{a, b})
	if err != nil || string(got) != "abc" || p != filepath.Join(b, "v.bin") {
		t.Fatalf("got %q %s %v", got, p, err)
	}
	// The first folder wins, and a wrong file there is an error, not a skip.
	os.WriteFile(filepath.Join(a, "v.bin"), []byte("abd"), 0o644)
	if _, _, err := find(v, []string{a, b}); err == nil || !strings.Contains(err.Error(), "want ba7816bf") {
		t.Fatalf("wrong file: %v", err)
	}
}

func TestDirs(t *testing.T) {
	t.Setenv(EnvVar, "/somewhere")
	d := Dirs()
	if len(d) != 2 || d[0] != "/somewhere" || !strings.HasSuffix(d[1], filepath.Join("shared", "vectors")) {
		t.Fatalf("dirs %v", d)
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if d[1] != filepath.Join(filepath.Dir(root), "shared", "vectors") {
		t.Fatalf("dirs %v, module root %s", d, root)
	}
}

func TestKnownUnique(t *testing.T) {
	seen := map[string]bool{}
	for _, v := range Known {
		if seen[v.Name] || len(v.SHA256) != 64 || v.Source == "" {
			t.Errorf("vector %+v", v)
		}
		seen[v.Name] = true
	}
}

// TestReadme: README.md names every known vector with its sha256.
func TestReadme(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range Known {
		if !strings.Contains(string(b), v.Name) || !strings.Contains(string(b), v.SHA256) {
			t.Errorf("README.md does not list %s with its sha256", v.Name)
		}
	}
}
