//go:build wasmtime

// barewasmtime is the wasmtime baseline of bench: the smallest runner of a
// WASI command on wasmtime-go with wasmtime's own WASI and a cache of
// serialized modules, and nothing of Castellan. Build it with -tags
// wasmtime (cgo).
//
//	barewasmtime [-cache DIR] app.wasm [args...]
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/bytecodealliance/wasmtime-go/v39"
)

func main() {
	cache := flag.String("cache", "", "folder of serialized modules")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: barewasmtime [-cache DIR] app.wasm [args...]")
		os.Exit(2)
	}
	code, err := run(*cache, flag.Arg(0), flag.Args()[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func run(cache, path string, args []string) (int, error) {
	wasm, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	engine := wasmtime.NewEngine()
	mod, err := load(engine, cache, wasm)
	if err != nil {
		return 0, err
	}
	wc := wasmtime.NewWasiConfig()
	wc.SetArgv(append([]string{"main.wasm"}, args...))
	wc.InheritStdin()
	wc.InheritStdout()
	wc.InheritStderr()
	store := wasmtime.NewStore(engine)
	store.SetWasi(wc)
	linker := wasmtime.NewLinker(engine)
	if err := linker.DefineWasi(); err != nil {
		return 0, err
	}
	inst, err := linker.Instantiate(store, mod)
	if err != nil {
		return 0, err
	}
	_, err = inst.GetFunc(store, "_start").Call(store)
	var werr *wasmtime.Error
	if errors.As(err, &werr) {
		if code, ok := werr.ExitStatus(); ok {
			return int(code), nil
		}
	}
	return 0, err
}

// load compiles wasm, or maps its serialized form from the cache.
func load(engine *wasmtime.Engine, cache string, wasm []byte) (*wasmtime.Module, error) {
	if cache == "" {
		return wasmtime.NewModule(engine, wasm)
	}
	sum := sha256.Sum256(wasm)
	file := filepath.Join(cache, "barewasmtime-"+hex.EncodeToString(sum[:])+".cwasm")
	if mod, err := wasmtime.NewModuleDeserializeFile(engine, file); err == nil {
		return mod, nil
	}
	mod, err := wasmtime.NewModule(engine, wasm)
	if err != nil {
		return nil, err
	}
	b, err := mod.Serialize()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, err
	}
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, err
	}
	return mod, os.Rename(tmp, file)
}
