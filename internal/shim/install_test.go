package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

func TestInstall(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(t.TempDir(), "castellan")
	os.WriteFile(bin, []byte("binary"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc/containerd"), 0o755)
	orig := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n"
	os.WriteFile(filepath.Join(root, NodeContainerd), []byte(orig), 0o644)
	in := &Install{Root: root, Binary: bin, Options: []byte("backend = \"sim-snp\"\n"), Handler: "castellan"}
	done, err := in.Run()
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 4 {
		t.Errorf("first install: %q, want 4 changes", done)
	}
	if b, _ := os.ReadFile(filepath.Join(root, NodeBinDir, "castellan")); string(b) != "binary" {
		t.Errorf("binary %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(root, NodeBinDir, BinaryName)); l != "castellan" {
		t.Errorf("shim link -> %q", l)
	}
	cfg, _ := os.ReadFile(filepath.Join(root, NodeContainerd))
	if !strings.HasPrefix(string(cfg), orig) {
		t.Errorf("containerd's config was not kept:\n%s", cfg)
	}
	var parsed map[string]any
	if err := toml.Unmarshal(cfg, &parsed); err != nil {
		t.Fatalf("containerd's config no longer parses: %v\n%s", err, cfg)
	}
	rt := parsed["plugins"].(map[string]any)["io.containerd.grpc.v1.cri"].(map[string]any)["containerd"].(map[string]any)["runtimes"].(map[string]any)["castellan"].(map[string]any)
	if rt["runtime_type"] != RuntimeType || rt["options"].(map[string]any)["ConfigPath"] != NodeOptionsFile {
		t.Errorf("runtime handler %v", rt)
	}
	if done, err := in.Run(); err != nil || len(done) != 0 {
		t.Errorf("second install: %q, %v; want no change", done, err)
	}
	in.Options = []byte("backend = \"bogus\"\n")
	if _, err := in.Run(); err == nil || !strings.Contains(err.Error(), "shim options: backend \"bogus\"") {
		t.Errorf("bad options: %v", err)
	}
}
