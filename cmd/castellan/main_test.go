package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-dev/castellan/internal/cli"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"castellan": func() { os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the CLI scenarios in testdata/script: each asserts the
// stdout, stderr and exit status of the real castellan main.
//
// Scripts get Wasm fixtures, built from source, with the command
// "fixture go|c NAME [DEST]".
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
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"fixture": cmdFixture,
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
