// barewazero is the benchmark baseline: the smallest runner of a WASI
// command on wazero with wazero's own WASI and a compilation cache, and
// nothing of Castellan. bench compares `castellan run` against it.
//
//	barewazero [-cache DIR] app.wasm [args...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

func main() {
	cache := flag.String("cache", "", "compilation cache folder")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: barewazero [-cache DIR] app.wasm [args...]")
		os.Exit(2)
	}
	wasm, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx := context.Background()
	cfg := wazero.NewRuntimeConfig()
	if *cache != "" {
		c, err := wazero.NewCompilationCacheWithDir(*cache)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cfg = cfg.WithCompilationCache(c)
	}
	r := wazero.NewRuntimeWithConfig(ctx, cfg)
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	args := append([]string{"main.wasm"}, flag.Args()[1:]...)
	mc := wazero.NewModuleConfig().WithArgs(args...).WithStdin(os.Stdin).WithStdout(os.Stdout).WithStderr(os.Stderr).
		WithSysWalltime().WithSysNanotime().WithSysNanosleep().WithRandSource(randReader{})
	_, err = r.InstantiateWithConfig(ctx, wasm, mc)
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		os.Exit(int(exit.ExitCode()))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
