// hello is the quickstart workload: it greets, shows the arguments and the
// descriptor table its config gave it, and reads a file from a preopened
// folder.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Println("Hello from a Castellan keep!")
	fmt.Println("args:", os.Args)
	fmt.Println("descriptors:", os.Getenv("FD_COUNT"), os.Getenv("FD_NAMES"))
	if b, err := os.ReadFile("/data/greeting.txt"); err == nil {
		fmt.Printf("read /data/greeting.txt: %s", b)
	} else {
		fmt.Println("no /data folder:", err)
	}
}
