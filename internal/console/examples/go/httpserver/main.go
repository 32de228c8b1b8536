// httpserver serves HTTP on the listen descriptor named "web" in its config:
// the keep opens the socket and hands it to the workload, which never calls
// listen itself (WASI preview 1 has no such call).
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
)

func main() {
	log.SetFlags(0)
	fd := -1
	for i, n := range strings.Split(os.Getenv("FD_NAMES"), ":") {
		if n == "web" {
			fd = i
		}
	}
	if fd < 0 {
		log.Fatalf("no descriptor named web in FD_NAMES=%q", os.Getenv("FD_NAMES"))
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "web"))
	if err != nil {
		log.Fatalf("listen descriptor %d: %v", fd, err)
	}
	log.Printf("serving HTTP on descriptor %d", fd)
	var n atomic.Int64
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c := n.Add(1)
		fmt.Printf("request %d: %s %s\n", c, r.Method, r.URL.Path)
		fmt.Fprintf(w, "Hello from a Castellan keep! You asked for %s (request %d).\n", r.URL.Path, c)
	})
	log.Fatal(http.Serve(l, nil))
}
