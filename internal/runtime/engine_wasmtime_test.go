//go:build wasmtime && unix

package runtime

import "github.com/castellan-dev/castellan/internal/engine"

// Built with the tag wasmtime, the package's tests run on wasmtime
// (scripts/test runs them once without the tag, on wazero).
func init() { defaultEngine = engine.NameWasmtime }
