package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/cli"
	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(cleanupM{m}, map[string]func(){
		"castellan": func() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// cleanupM runs the tests, then removes the scripts' keep image
// (testscript.Main exits as soon as Run returns).
type cleanupM struct{ m *testing.M }

func (c cleanupM) Run() int {
	code := c.m.Run()
	if image.dir != "" {
		os.RemoveAll(image.dir)
	}
	return code
}

// image is the keep image of the scripts' VM keeps.
var image struct {
	once sync.Once
	dir  string
	err  error
}

// cmdKeepImage sets VAR to a keep image built from this source tree.
func cmdKeepImage(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: keepimage VAR")
	}
	image.once.Do(func() {
		kernel, mods, err := keepimage.FindKernel()
		if err != nil {
			image.err = err
			return
		}
		root, err := fixtures.RepoRoot()
		if err != nil {
			image.err = err
			return
		}
		if image.dir, image.err = os.MkdirTemp("", "cst-image-"); image.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		_, image.err = keepimage.Build(ctx, keepimage.Options{Out: image.dir, Kernel: kernel, Modules: mods, Source: root})
	})
	ts.Check(image.err)
	ts.Setenv(args[0], image.dir)
}

// TestScripts runs the CLI scenarios in testdata/script: each asserts the
// stdout, stderr and exit status of the real castellan main.
//
// Scripts get Wasm fixtures, built from source, with the command
// "fixture go|c NAME [DEST]", and a keep image for VM keeps with
// "keepimage VAR" (built once per test binary; scripts skip without QEMU
// or a kernel with "[!vmkeeps] skip").
func TestScripts(t *testing.T) {
	cache := t.TempDir() // one compilation cache for all scripts
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			for _, v := range []string{"XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"} {
				env.Setenv(v, filepath.Join(env.WorkDir, "home", v))
			}
			env.Setenv("HOME", filepath.Join(env.WorkDir, "home"))
			env.Setenv("CASTELLAN_CACHE_DIR", cache)
			env.Setenv("CASTELLAN_CONFIG_DIR", filepath.Join(env.WorkDir, "home", "castellan-config"))
			return nil
		},
		// [vmkeeps]: QEMU and a kernel for a keep image are here.
		// [wasmtime]: this build has the wasmtime engine (-tags wasmtime).
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "vmkeeps":
				_, err1 := exec.LookPath(qemu.Program)
				_, _, err2 := keepimage.FindKernel()
				return err1 == nil && err2 == nil, nil
			case "wasmtime":
				return engine.WasmtimeBuilt, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"fixture":   cmdFixture,
			"freeport":  cmdFreePort,
			"waitport":  cmdWaitPort,
			"keepimage": cmdKeepImage,
		},
	})
}

func cmdFixture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: fixture go|c NAME [DEST]")
	}
	var p string
	var err error
	switch args[0] {
	case "go":
		p, err = fixtures.BuildGo(args[1])
	case "c":
		p, err = fixtures.BuildC(args[1])
	default:
		ts.Fatalf("fixture: unknown language %q", args[0])
	}
	ts.Check(err)
	dest := args[1] + ".wasm"
	if len(args) == 3 {
		dest = args[2]
	}
	b, err := os.ReadFile(p)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(dest), b, 0o644))
}

// cmdFreePort sets each named variable to a TCP port free on 127.0.0.1.
func cmdFreePort(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: freeport VAR...")
	}
	for _, v := range args {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		ts.Check(err)
		ts.Setenv(v, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
		l.Close()
	}
}

// cmdWaitPort waits until 127.0.0.1:PORT accepts connections, for a
// server started in the background with "exec ... &".
func cmdWaitPort(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitport PORT")
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+args[0], time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("nothing listens on 127.0.0.1:%s after 2m: %v", args[0], err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
