package shim

import (
	"path/filepath"
	"strings"
)

// BinaryName is the shim's name: containerd maps the runtime type
// io.containerd.castellan.v1 to this binary on its PATH.
const BinaryName = "containerd-shim-castellan-v1"

// RuntimeType is the runtime name containerd and ctr use for this shim.
const RuntimeType = "io.containerd.castellan.v1"

// IsShim says whether this process was started under the shim's name.
func IsShim(argv0 string) bool {
	return strings.TrimSuffix(filepath.Base(argv0), ".exe") == BinaryName
}
