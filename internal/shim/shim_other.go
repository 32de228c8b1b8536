//go:build !linux

package shim

import (
	"fmt"
	"io"
	"runtime"
)

// Main refuses: containerd's shim runs keeps through Linux interfaces
// (process groups, subreapers, mounts), as the host agent does.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fmt.Fprintf(stderr, "%s: the containerd shim runs on Linux only, not %s\n", BinaryName, runtime.GOOS)
	return 1
}
