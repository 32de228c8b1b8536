//go:build !wasmtime || !unix

package engine

import "errors"

// WasmtimeBuilt reports whether this build includes the wasmtime engine.
const WasmtimeBuilt = false

// errNoWasmtime is the one line a build without the tag gives.
var errNoWasmtime = errors.New("this castellan is built without wasmtime: build it with CGO_ENABLED=1 go build -tags wasmtime ./cmd/castellan")

func newWasmtime(Config) (Engine, error) { return nil, errNoWasmtime }
