package runtime

import (
	"io"
	"net/http"
	"testing"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// BenchmarkHTTPServe measures requests served by the httpserver fixture
// through Castellan's WASI sockets, with parallel keep-alive clients.
func BenchmarkHTTPServe(b *testing.B) {
	path, err := fixtures.BuildGo("httpserver")
	if err != nil {
		b.Fatal(err)
	}
	addr, wait := server(b, path, "tcp", nil)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	client := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get("http://" + addr + "/bench")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	b.StopTimer()
	if resp, err := client.Get("http://" + addr + "/exit?code=0"); err == nil {
		resp.Body.Close()
	}
	tr.CloseIdleConnections()
	wait()
}
