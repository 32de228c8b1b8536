// Command castellan runs WebAssembly workloads in keeps and proves what
// they run. All behaviour lives in internal/cli so that it can be tested
// in-process.
package main

import (
	"os"

	"github.com/castellan-dev/castellan/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
