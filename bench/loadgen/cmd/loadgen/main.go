// Command loadgen loads an HTTP/1.1 server with bench/loadgen and prints
// requests per second and latency, for measurements outside `go run
// ./bench` (before/after comparisons of one server, other programs):
//
//	go run ./bench/loadgen/cmd/loadgen -addr 127.0.0.1:8080 -conns 32 -time 5s [-tls]
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/castellan-dev/castellan/bench/loadgen"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "server address")
	conns := flag.Int("conns", 32, "keep-alive connections")
	useTLS := flag.Bool("tls", false, "speak TLS (the certificate is not verified)")
	path := flag.String("path", "/", "request path")
	dur := flag.Duration("time", 5*time.Second, "measured duration, after a tenth of it as warm-up")
	wait := flag.Duration("wait", time.Minute, "how long to wait for the server to accept connections")
	flag.Parse()
	if err := run(*addr, *conns, *useTLS, *path, *dur, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: error:", err)
		os.Exit(1)
	}
}

func run(addr string, conns int, useTLS bool, path string, dur, wait time.Duration) error {
	if err := loadgen.Wait(addr, wait); err != nil {
		return err
	}
	o := loadgen.Options{Addr: addr, TLS: useTLS, Path: path, Conns: conns, Duration: dur / 10}
	if _, err := loadgen.Run(o); err != nil {
		return err
	}
	o.Duration = dur
	r, err := loadgen.Run(o)
	if err != nil {
		return err
	}
	fmt.Printf("%.0f requests/s, p50 %d µs, p99 %d µs, %d errors\n", r.Rate(), r.P50.Microseconds(), r.P99.Microseconds(), r.Errors)
	return nil
}
