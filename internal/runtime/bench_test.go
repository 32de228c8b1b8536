package runtime

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/castellan-dev/castellan/bench/loadgen"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// BenchmarkHTTPServe measures requests served by the httpserver fixture
// through Castellan's WASI sockets, from 1 and 32 keep-alive connections of the
// lean load generator (plain and TLS). Profile it with -cpuprofile.
func BenchmarkHTTPServe(b *testing.B) {
	path, err := fixtures.BuildGo("httpserver")
	if err != nil {
		b.Fatal(err)
	}
	cert, pool := testCert(b)
	for _, bc := range []struct {
		prot  string
		conns int
	}{{"tcp", 1}, {"tcp", 32}, {"tls", 1}, {"tls", 32}} {
		prot := bc.prot
		b.Run(fmt.Sprintf("%s-%d", prot, bc.conns), func(b *testing.B) {
			addr, wait := server(b, path, prot, cert)
			b.ResetTimer()
			res, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: prot == "tls", Path: "/bench", Conns: bc.conns, Requests: b.N})
			b.StopTimer()
			if err != nil || res.Errors > 0 {
				b.Fatalf("load: %v, %d errors", err, res.Errors)
			}
			b.ReportMetric(float64(res.P50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
			scheme, client := "http://", http.DefaultClient
			if prot == "tls" {
				scheme = "https://"
				client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			}
			if resp, err := client.Get(scheme + addr + "/exit?code=0"); err == nil {
				resp.Body.Close()
			}
			wait()
		})
	}
}

// BenchmarkCHTTPServe is BenchmarkHTTPServe for the single-threaded C
// server (testdata/fixtures/c/httpbench.c), whose own work per request is
// small: what it measures is mostly the host layer (poll_oneoff, sock_recv,
// sock_send, TLS). The fixture exits after the b.N requests it is told.
func BenchmarkCHTTPServe(b *testing.B) {
	path, err := fixtures.BuildC("httpbench")
	if err != nil {
		b.Skip(err)
	}
	cert, _ := testCert(b)
	for _, bc := range []struct {
		prot  string
		conns int
	}{{"tcp", 1}, {"tcp", 32}, {"tls", 1}, {"tls", 32}} {
		b.Run(fmt.Sprintf("%s-%d", bc.prot, bc.conns), func(b *testing.B) {
			addr, wait := server(b, path, bc.prot, cert, strconv.Itoa(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			res, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: bc.prot == "tls", Conns: bc.conns, Requests: b.N})
			b.StopTimer()
			if err != nil || res.Errors > 0 {
				b.Fatalf("load: %v, %d errors", err, res.Errors)
			}
			b.ReportMetric(float64(res.P50.Microseconds()), "p50-µs")
			b.ReportMetric(float64(res.P99.Microseconds()), "p99-µs")
			if r := wait(); r.err != nil || r.code != 0 {
				b.Fatalf("server: code %d, err %v, stderr %q", r.code, r.err, r.stderr)
			}
		})
	}
}
