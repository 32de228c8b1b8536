package runtime

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/bench/loadgen"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestCHTTPServer serves requests from the C httpbench fixture (accept,
// poll, recv and send of wasi-libc on a listen descriptor) in a keep,
// plain and TLS: two pipelined requests on one connection, then requests
// from the load generator on three connections at once. The fixture exits
// after the number of requests given as its argument.
func TestCHTTPServer(t *testing.T) {
	wasm := fixtures.C(t, "httpbench")
	cert, pool := testCert(t)
	for _, prot := range []string{"tcp", "tls"} {
		t.Run(prot, func(t *testing.T) {
			const pipelined, loaded = 2, 30
			addr, wait := server(t, wasm, prot, cert, "32")
			c, err := net.DialTimeout("tcp", addr, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if prot == "tls" {
				tc := tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"); err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			for i := range pipelined {
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(body) != "hello from a keep\n" ||
					resp.Header.Get("Content-Type") != "text/plain" || resp.Header.Get("Date") == "" || resp.Close {
					t.Fatalf("response %d: %d %v %q, %v", i, resp.StatusCode, resp.Header, body, err)
				}
			}
			res, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: prot == "tls", Conns: 3, Requests: loaded})
			if err != nil || res.Errors > 0 || res.Requests != loaded {
				t.Fatalf("load: %v, %d answered, %d errors", err, res.Requests, res.Errors)
			}
			if len(res.Bodies) != 1 || res.Bodies[0] != "hello from a keep\n" {
				t.Errorf("bodies %q", res.Bodies)
			}
			end := wait()
			if end.err != nil || end.code != 0 || end.stdout != "served 32\n" {
				t.Fatalf("server: code %d, err %v, stdout %q, stderr %q", end.code, end.err, end.stdout, end.stderr)
			}
		})
	}
}
