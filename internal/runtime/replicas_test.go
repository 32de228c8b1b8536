package runtime

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestReplicasServeConcurrently runs three instances behind one listen
// socket (plain and TLS) and checks that connections held open at the same
// time are served by more than one instance, and that one instance exiting
// stops the whole keep.
func TestReplicasServeConcurrently(t *testing.T) {
	cert, pool := testCert(t)
	for _, prot := range []string{"tcp", "tls"} {
		t.Run(prot, func(t *testing.T) {
			before := runtime.NumGoroutine()
			cfg := config.Default()
			cfg.Replicas = 3
			cfg.Files = append(cfg.Files, config.File{Kind: config.KindListen, Name: "http", Prot: prot, Addr: "127.0.0.1"})
			addrc := make(chan string, 3)
			done := make(chan result, 1)
			go func() {
				code, err := Run(context.Background(), Options{
					Name: "server.wasm", Wasm: readWasm(t, fixtures.Go(t, "httpserver")), Config: cfg,
					Certificate: cert, CacheDir: testCache,
					OnListen: func(_ string, a net.Addr) { addrc <- a.String() },
				})
				done <- result{code: code, err: err}
			}()
			var addr string
			select {
			case addr = <-addrc:
			case r := <-done:
				t.Fatalf("keep ended before listening: %v", r.err)
			}
			// Each instance's descriptor takes one pending connection as soon
			// as the instance exists, so connections opened together reach
			// more than one instance whatever the machine's load.
			const conns = 12
			cs := make([]net.Conn, conns)
			for i := range cs {
				c, err := net.DialTimeout("tcp", addr, time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if prot == "tls" {
					c = tls.Client(c, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				}
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				defer c.Close()
				cs[i] = c
			}
			seen := map[string]int{}
			for _, c := range cs {
				io.WriteString(c, "GET /instance HTTP/1.1\r\nHost: keep\r\n\r\n")
			}
			for i, c := range cs {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				seen[string(body)]++
			}
			if len(seen) < 2 {
				t.Errorf("instances that served: %v; want more than one", seen)
			}
			for id := range seen {
				if id != "0" && id != "1" && id != "2" {
					t.Errorf("instance id %q, want 0, 1 or 2", id)
				}
			}
			if len(addrc) != 0 {
				t.Errorf("OnListen called more than once")
			}
			// One instance exits with 3: the keep stops every instance,
			// closes the socket and reports 3.
			io.WriteString(cs[0], "GET /exit?code=3 HTTP/1.1\r\nHost: keep\r\n\r\n")
			var r result
			select {
			case r = <-done:
			case <-time.After(2 * time.Minute):
				t.Fatal("the keep did not stop when one instance exited")
			}
			if r.err != nil || r.code != 3 {
				t.Fatalf("keep: code %d, err %v; want 3 and no error", r.code, r.err)
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				c.Close()
				t.Error("the listen socket is still open after the keep stopped")
			}
			for _, c := range cs {
				c.Close()
			}
			checkGoroutines(t, before)
		})
	}
}
