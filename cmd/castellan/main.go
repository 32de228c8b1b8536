// Command castellan runs WebAssembly workloads in keeps and proves what
// they run. All behaviour lives in internal/cli so that it can be tested
// in-process. Started by the kernel as /init of a keep image, it is the VM
// keep's guest instead (internal/keep/vmguest), and never returns.
package main

import (
	"os"

	"github.com/castellan-dev/castellan/internal/cli"
	"github.com/castellan-dev/castellan/internal/keep/vmguest"
)

func main() {
	if vmguest.IsKeepGuest() {
		vmguest.Main()
	}
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
