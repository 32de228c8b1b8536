package config

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// render is the golden form of a parse result.
func render(cfg *Config, err error) string {
	if err != nil {
		return "error: " + err.Error() + "\n"
	}
	type limits struct {
		MemoryPages  uint32
		WallTime     string
		MaxOutput    int64
		MaxOpenFiles int
	}
	out := struct {
		Steward  string            `json:",omitempty"`
		Args     []string          `json:",omitempty"`
		Env      map[string]string `json:",omitempty"`
		Files    []File
		Limits   limits
		Environ  []string
		Warnings []string `json:",omitempty"`
		// Shown only when set, so that older golden files stay as they are.
		SecretEnv      []string          `json:",omitempty"`
		Secrets        []string          `json:",omitempty"`
		DetachedOutput string            `json:",omitempty"`
		VMMemory       int64             `json:",omitempty"`
		VCPUs          int               `json:",omitempty"`
		SecretRefs     map[string]string `json:",omitempty"`
		Replicas       int               `json:",omitempty"`
		StewardCA      string            `json:",omitempty"`
	}{cfg.Steward, cfg.Args, cfg.Env, cfg.Files, limits{cfg.Limits.MemoryPages, cfg.Limits.WallTime.String(), cfg.Limits.MaxOutput, cfg.Limits.MaxOpenFiles}, cfg.Environ(), cfg.Warnings,
		cfg.SecretEnv, cfg.SecretNames(), "", cfg.Limits.VMMemory, cfg.Limits.VCPUs, cfg.SecretRefs, cfg.Replicas, cfg.StewardCA}
	if cfg.DetachedOutput != DetachedDiscard {
		out.DetachedOutput = cfg.DetachedOutput
	}
	b, jerr := json.MarshalIndent(out, "", "  ")
	if jerr != nil {
		panic(jerr)
	}
	return string(b) + "\n"
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".toml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cfg, perr := Parse(filepath.Base(f), data)
			got := render(cfg, perr)
			if strings.HasPrefix(name, "err_") != (perr != nil) {
				t.Errorf("%s: error = %v, but the name says %v", f, perr, strings.HasPrefix(name, "err_"))
			}
			golden := strings.TrimSuffix(f, ".toml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if got != string(want) {
				t.Errorf("%s:\ngot:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}

func TestErrorsAreOneLineWithFileAndLine(t *testing.T) {
	files, _ := filepath.Glob("testdata/err_*.toml")
	for _, f := range files {
		data, _ := os.ReadFile(f)
		_, err := Parse("cfg.toml", data)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Errorf("%s: error %v is not a *config.Error", f, err)
			continue
		}
		if pe.Line == 0 {
			t.Errorf("%s: error %q has no line", f, err)
		}
		if !strings.HasPrefix(err.Error(), "cfg.toml:") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q is not one line starting with the file name", f, err)
		}
	}
}

func TestLines(t *testing.T) {
	// Errors must point at the key at fault, not the entry or the file.
	cases := []struct {
		file string
		line int
		key  string
	}{
		{"err_unknown_file_key.toml", 8, "files[1].prto"},
		{"err_unknown_kind.toml", 4, "files[1].kind"},
		{"err_missing_kind.toml", 4, "files[1]"},
		{"err_dup_name.toml", 7, "files[1].name"},
		{"err_port_zero.toml", 5, "files[0].port"},
		{"err_limits_unknown.toml", 3, "limits.cpu"},
		{"err_env_type.toml", 3, "env.B"},
		{"err_args_type.toml", 1, "args[1]"},
		{"err_inline_unknown.toml", 3, "files[1].mode"},
		{"err_syntax.toml", 3, ""},
		{"err_dup_key.toml", 3, ""},
		{"err_secret_env_dup.toml", 4, "secrets.env[1]"},
		{"err_secret_env_in_env.toml", 5, "secrets.env[0]"},
		{"err_secrets_unknown.toml", 3, "secrets.file"},
		{"err_secret_file_path.toml", 4, "files[0].path"},
		{"err_detached_output_bad.toml", 1, "detached_output"},
	}
	for _, c := range cases {
		data, err := os.ReadFile(filepath.Join("testdata", c.file))
		if err != nil {
			t.Fatal(err)
		}
		_, err = Parse(c.file, data)
		var pe *Error
		if !errors.As(err, &pe) {
			t.Fatalf("%s: %v is not a *config.Error", c.file, err)
		}
		if pe.Line != c.line || (c.key != "" && pe.Key != c.key) {
			t.Errorf("%s: line %d key %q, want line %d key %q (%v)", c.file, pe.Line, pe.Key, c.line, c.key, err)
		}
	}
}

func TestDefaultsAndEnarxSemantics(t *testing.T) {
	cfg, err := Parse("a.toml", []byte("[[files]]\nkind = \"listen\"\nname = \"l\"\nprot = \"tcp\"\n[[files]]\nkind = \"connect\"\nhost = \"h\"\nprot = \"tls\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, c := cfg.Files[0], cfg.Files[1]
	if l.Addr != "::" || l.Port != 80 || c.Port != 443 || c.Name != "h" || l.Line != 1 || c.Line != 5 {
		t.Errorf("defaults: %+v %+v", l, c)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("unexpected warnings %q", cfg.Warnings)
	}
	cfg, err = Parse("b.toml", []byte("args = []\n"))
	if err != nil || len(cfg.Files) != 0 {
		t.Errorf("a config without [[files]] must give zero descriptors: %+v %v", cfg, err)
	}
	if got := strings.Join(cfg.Argv(), " "); got != "main.wasm" {
		t.Errorf("argv %q", got)
	}
}

func TestLoadResolvesPaths(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "Enarx.toml")
	src := "[[files]]\nkind = \"dir\"\nname = \"/d\"\npath = \"sub\"\n[[files]]\nkind = \"connect\"\nhost = \"x\"\nprot = \"tls\"\nca_file = \"/etc/roots.pem\"\n"
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, raw, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != src {
		t.Errorf("raw bytes changed")
	}
	if cfg.Files[0].Path != filepath.Join(dir, "sub") || cfg.Files[1].CAFile != "/etc/roots.pem" {
		t.Errorf("paths: %q %q", cfg.Files[0].Path, cfg.Files[1].CAFile)
	}
	if _, _, err := Load(filepath.Join(dir, "missing.toml")); err == nil {
		t.Error("Load of a missing file succeeded")
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#", MaxConfigSize+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load of an oversized file: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"64MiB", 64 << 20, true},
		{"1GiB", 1 << 30, true},
		{"512KiB", 512 << 10, true},
		{"10MB", 10_000_000, true},
		{"4096", 4096, true},
		{"4096B", 4096, true},
		{"2 GiB", 2 << 30, true},
		{"", 0, false},
		{"MiB", 0, false},
		{"-1MiB", 0, false},
		{"1.5GiB", 0, false},
		{"99999999999TiB", 0, false},
		{"12XB", 0, false},
	}
	for _, c := range cases {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestLimitsConversion(t *testing.T) {
	cfg, err := Parse("l.toml", []byte("[limits]\nmemory = \"1GiB\"\nwall_time = \"1m30s\"\nmax_output = 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.MemoryPages != 16384 || cfg.Limits.WallTime != 90*time.Second || cfg.Limits.MaxOutput != 10 {
		t.Errorf("limits %+v", cfg.Limits)
	}
	cfg, err = Parse("l.toml", []byte("[limits]\nmemory = 1\n"))
	if err != nil || cfg.Limits.MemoryPages != 1 {
		t.Errorf("memory = 1 byte must round up to one page: %+v %v", cfg, err)
	}
	if _, err := Parse("l.toml", []byte("[limits]\nmemory = \"4GiB\"\n")); err != nil {
		t.Errorf("4 GiB is the wasm32 maximum: %v", err)
	}
}
