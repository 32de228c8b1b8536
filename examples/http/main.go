// http serves HTTP on the listen descriptor its config names. With
// prot = "tls" the keep ends TLS and this program sees plain HTTP.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
)

func main() {
	// Descriptor 3 is the first [[files]] entry after stdio (FD_NAMES tells).
	names := strings.Split(os.Getenv("FD_NAMES"), ":")
	fd := 3
	for i, n := range names {
		if n == "web" {
			fd = i
		}
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "web"))
	if err != nil {
		log.Fatalf("listen descriptor %d: %v", fd, err)
	}
	log.Printf("serving HTTP on descriptor %d", fd)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from a Castellan keep! You asked for %s\n", r.URL.Path)
	})
	log.Fatal(http.Serve(l, nil))
}
