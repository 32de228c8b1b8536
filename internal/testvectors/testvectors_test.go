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

func TestParseDownload(t *testing.T) {
	m := Module{Path: "example.com/m", Version: "v1.0.0", Sum: "h1:good="}
	for _, tc := range []struct {
		name      string
		out       string
		runErr    error
		dir, want string
		wrong     bool
	}{
		{name: "cached", out: `{"Path":"example.com/m","Version":"v1.0.0","Dir":"/cache/m@v1.0.0","Sum":"h1:good="}`, dir: "/cache/m@v1.0.0"},
		{name: "refused by the proxy", out: `{"Path":"example.com/m","Error":"403 Forbidden"}`, runErr: errors.New("exit status 1"), want: "403 Forbidden"},
		{name: "another hash", out: `{"Dir":"/cache/m@v1.0.0","Sum":"h1:other="}`, want: "has hash h1:other=, want h1:good=", wrong: true},
		{name: "no folder", out: `{"Sum":"h1:good="}`, want: "no folder"},
		{name: "no JSON", out: "", runErr: errors.New("exec: \"go\": not found"), want: "not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := parseDownload(m, []byte(tc.out), tc.runErr, "")
			if md.dir != tc.dir || md.wrong != tc.wrong || (tc.want == "") != (md.err == nil) || (md.err != nil && !strings.Contains(md.err.Error(), tc.want)) {
				t.Errorf("got %+v, want dir %q, error with %q, wrong %v", md, tc.dir, tc.want, tc.wrong)
			}
		})
	}
}

// TestModuleFile reads a file of a module Castellan already depends on
// (so in the module cache wherever the tests build) through the go command.
func TestModuleFile(t *testing.T) {
	b := ModuleFile(t, "github.com/veraison/ccatoken", "realm/testvectors/tf-rmm/cca_platform.pub")
	if !strings.HasPrefix(string(b), "-----BEGIN PUBLIC KEY-----") {
		t.Errorf("cca_platform.pub starts %q", b[:min(len(b), 30)])
	}
}

func TestModulesUniqueAndListed(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, m := range Modules {
		if seen[m.Path] || !strings.HasPrefix(m.Sum, "h1:") || m.Version == "" || m.Licence == "" {
			t.Errorf("module %+v", m)
		}
		seen[m.Path] = true
		if !strings.Contains(string(b), m.Path+"@"+m.Version) || !strings.Contains(string(b), m.Sum) {
			t.Errorf("README.md does not list %s@%s with its hash", m.Path, m.Version)
		}
	}
}
