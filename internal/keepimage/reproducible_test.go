package keepimage

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// copySource copies castellan's source tree (without .git and test
// artifacts) to dst.
func copySource(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "test-artifacts") {
			return filepath.SkipDir
		}
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReproducibleCastellan builds castellan from two copies of this
// source tree in different folders: the binaries are byte-identical (the
// image's /init, hence its measurement, does not depend on where it was
// built).
func TestReproducibleCastellan(t *testing.T) {
	if testing.Short() {
		t.Skip("builds castellan twice")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	wd, _ := os.Getwd()
	src, err := FindSource(wd)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var bins [][]byte
	for _, sub := range []string{"a", "deeper/b"} {
		dir := filepath.Join(t.TempDir(), sub, "castellan-src")
		copySource(t, src, dir)
		out := filepath.Join(t.TempDir(), "castellan")
		if err := BuildCastellan(ctx, dir, out); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkStatic(b); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(dir)) {
			t.Fatalf("the binary holds its build folder %s", dir)
		}
		bins = append(bins, b)
	}
	if !bytes.Equal(bins[0], bins[1]) {
		t.Fatalf("two builds of the same source differ (%d and %d bytes)", len(bins[0]), len(bins[1]))
	}
}

func TestFindSource(t *testing.T) {
	wd, _ := os.Getwd()
	src, err := FindSource(wd)
	if err != nil || filepath.Base(filepath.Join(src, "internal", "keepimage")) != "keepimage" {
		t.Fatalf("%q %v", src, err)
	}
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "go.mod"), []byte("module example.com/x\n\ngo 1.22\n"), 0o644)
	if _, err := FindSource(other); err == nil {
		t.Fatal("another module taken for castellan's source")
	}
	if tc, err := Toolchain(src); err != nil || len(tc) < 5 || tc[:4] != "go1." {
		t.Fatalf("toolchain %q %v", tc, err)
	}
}
