// ticker runs until it is stopped: once a second it prints a line to
// standard output, and every fifth second one to standard error. It shows
// output streaming live and the console's Stop button and time limit.
package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	fmt.Println("ticker: counting seconds until the keep is stopped")
	for i := 1; ; i++ {
		time.Sleep(time.Second)
		fmt.Printf("tick %d\n", i)
		if i%5 == 0 {
			fmt.Fprintf(os.Stderr, "still running after %d seconds\n", i)
		}
	}
}
