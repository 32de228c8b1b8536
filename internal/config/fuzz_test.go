package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics on untrusted bytes (a config
// comes from a package) and that every error is one line that begins with
// the file name.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.toml")
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("[[files]]\nkind = \"listen\"\n[[files.x]]\na=1\n"))
	f.Add([]byte("files = [[1], {kind=\"stdin\"}]\n"))
	f.Add([]byte("secrets = {env = [\"A\", 1]}\nfiles = [{kind = \"secret\", name = \"A\"}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.toml") || strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("bad error form: %q", err)
			}
			return
		}
		for _, w := range cfg.Warnings {
			if !strings.HasPrefix(w, "fuzz.toml") || strings.ContainsAny(w, "\n\r") {
				t.Fatalf("bad warning form: %q", w)
			}
		}
		for _, fl := range cfg.Files {
			if strings.Contains(fl.Name, ":") {
				t.Fatalf("name with ':' accepted: %q", fl.Name)
			}
			if fl.Kind == KindSecret && !ValidSecretName(fl.Name) {
				t.Fatalf("secret file with a bad name accepted: %q", fl.Name)
			}
			if fl.Secret != nil {
				t.Fatalf("a secret's value came from the config: %q", fl.Name)
			}
		}
		for _, n := range cfg.SecretEnv {
			if _, ok := cfg.Env[n]; ok || !ValidSecretName(n) {
				t.Fatalf("secret env %q accepted with a value in [env] or a bad name", n)
			}
		}
		if cfg.DetachedOutput != DetachedDiscard && cfg.DetachedOutput != DetachedHost {
			t.Fatalf("detached_output %q accepted", cfg.DetachedOutput)
		}
	})
}
