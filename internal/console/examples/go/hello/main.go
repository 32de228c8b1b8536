// hello is the console's first example: it greets from inside the keep and
// shows what a WASI workload sees of its environment.
package main

import (
	"fmt"
	"os"
	"runtime"
)

func main() {
	fmt.Println("Hello, world, from a Castellan keep!")
	fmt.Printf("This program was compiled to WebAssembly (%s/%s) and runs in Castellan's runtime.\n", runtime.GOOS, runtime.GOARCH)
	fmt.Println("Arguments:", os.Args)
	fmt.Printf("Descriptors: %s (%s)\n", os.Getenv("FD_COUNT"), os.Getenv("FD_NAMES"))
	fmt.Fprintln(os.Stderr, "This line went to standard error.")
}
