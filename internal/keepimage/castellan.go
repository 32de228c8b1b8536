package keepimage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is castellan's Go module path, which marks its source tree.
const ModulePath = "github.com/castellan-dev/castellan"

// BuildFlags are the go build flags of the reproducible castellan binary:
// no file paths (-trimpath), no VCS stamp, no build ID, no symbols.
var BuildFlags = []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid="}

// FindSource returns the castellan source tree that holds dir (its go.mod
// names ModulePath), or an error.
func FindSource(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil {
			if goModModule(b) == ModulePath {
				return d, nil
			}
			return "", fmt.Errorf("%s is the Go module %q, not castellan's source", d, goModModule(b))
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("%s is not in castellan's source tree", dir)
		}
		d = parent
	}
}

func goModModule(b []byte) string {
	return goModField(b, "module")
}

// goModField returns the argument of the first line "key arg" of a go.mod.
func goModField(b []byte, key string) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == key {
			return f[1]
		}
	}
	return ""
}

// Toolchain returns the Go toolchain the source pins: its go.mod's
// toolchain line, else its go line ("go1.26.8").
func Toolchain(src string) (string, error) {
	b, err := os.ReadFile(filepath.Join(src, "go.mod"))
	if err != nil {
		return "", err
	}
	if t := goModField(b, "toolchain"); t != "" {
		return t, nil
	}
	if v := goModField(b, "go"); v != "" {
		return "go" + v, nil
	}
	return "", errors.New(src + "/go.mod: no go version")
}

// BuildCastellan builds cmd/castellan of the source tree src into out as
// a static linux/amd64 binary, reproducibly: the same source gives the
// same bytes in any folder, with exactly the toolchain go.mod names
// (GOTOOLCHAIN; the go command fetches it if the local one differs).
func BuildCastellan(ctx context.Context, src, out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return errors.New("no Go toolchain to build castellan from source (install Go, or give --castellan FILE)")
	}
	tc, err := Toolchain(src)
	if err != nil {
		return err
	}
	args := append([]string{"build"}, BuildFlags...)
	args = append(args, "-o", out, "./cmd/castellan")
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64=v1",
		"GOFLAGS=-mod=readonly", "GOEXPERIMENT=", "GOTOOLCHAIN="+tc)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000]
		}
		return fmt.Errorf("building castellan in %s: %v: %s", src, err, msg)
	}
	return nil
}
