package shim

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Install is what the node DaemonSet does on a node (through its host
// folder mount): it puts castellan and the shim's name beside it in
// root/usr/local/bin, writes the shim's options to
// root/etc/castellan/shim.toml and declares the runtime handler in
// containerd's config. containerd reads its config when it starts: the
// node's containerd must be restarted once afterwards.
type Install struct {
	Root    string // the node's root as mounted in the installer ("/host")
	Binary  string // this castellan binary
	Options []byte // the shim's options (TOML), checked first
	Handler string // the runtime handler's name (the RuntimeClass's handler)
	// AttestCA, if set, is the attestation service's CA certificate (PEM),
	// written to NodeAttestCA for the options' attest_ca.
	AttestCA []byte
}

// Paths on the node.
const (
	NodeBinDir      = "/usr/local/bin"
	NodeOptionsFile = "/etc/castellan/shim.toml"
	NodeContainerd  = "/etc/containerd/config.toml"
	NodeAttestCA    = "/etc/castellan/attest-ca.pem"
)

// handlerConfig is the CRI plugin's runtime handler (containerd 1.6 and
// 1.7 config version 2): it passes ConfigPath to the shim.
func handlerConfig(handler string) string {
	return fmt.Sprintf(`
# castellan: begin (written by 'castellan shim install')
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%[1]s]
  runtime_type = %[2]q
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%[1]s.options]
  ConfigPath = %[3]q
# castellan: end
`, handler, RuntimeType, NodeOptionsFile)
}

// Run installs; it returns what changed, one line each. Running it again
// with the same inputs changes nothing.
func (in *Install) Run() ([]string, error) {
	if _, err := ParseOptions(in.Options); err != nil {
		return nil, fmt.Errorf("shim options: %w", err)
	}
	if in.Handler == "" {
		in.Handler = "castellan"
	}
	var done []string
	bin, err := os.ReadFile(in.Binary)
	if err != nil {
		return nil, err
	}
	binDir := filepath.Join(in.Root, NodeBinDir)
	changed, err := writeIfChanged(filepath.Join(binDir, "castellan"), bin, 0o755)
	if err != nil {
		return nil, err
	}
	if changed {
		done = append(done, "installed "+filepath.Join(NodeBinDir, "castellan"))
	}
	link := filepath.Join(binDir, BinaryName)
	if t, err := os.Readlink(link); err != nil || t != "castellan" {
		os.Remove(link)
		if err := os.Symlink("castellan", link); err != nil {
			return nil, err
		}
		done = append(done, "linked "+filepath.Join(NodeBinDir, BinaryName)+" -> castellan")
	}
	if changed, err = writeIfChanged(filepath.Join(in.Root, NodeOptionsFile), in.Options, 0o644); err != nil {
		return nil, err
	}
	if changed {
		done = append(done, "wrote "+NodeOptionsFile)
	}
	if in.AttestCA != nil {
		if changed, err = writeIfChanged(filepath.Join(in.Root, NodeAttestCA), in.AttestCA, 0o644); err != nil {
			return nil, err
		}
		if changed {
			done = append(done, "wrote "+NodeAttestCA)
		}
	}
	cfgPath := filepath.Join(in.Root, NodeContainerd)
	cfg, err := os.ReadFile(cfgPath)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if !bytes.Contains(cfg, []byte("containerd.runtimes."+in.Handler+"]")) {
		if len(cfg) == 0 {
			cfg = []byte("version = 2\n")
		}
		cfg = append(cfg, handlerConfig(in.Handler)...)
		if _, err := writeIfChanged(cfgPath, cfg, 0o644); err != nil {
			return nil, err
		}
		done = append(done, "added runtime handler "+in.Handler+" to "+NodeContainerd+" (restart containerd on the node once)")
	}
	return done, nil
}

// writeIfChanged writes b to path atomically unless it holds b already.
func writeIfChanged(path string, b []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".castellan-*")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(b)); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}
