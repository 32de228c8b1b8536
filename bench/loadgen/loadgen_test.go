package loadgen

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunCountsRequests(t *testing.T) {
	var served atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		if r.URL.Path == "/chunked" {
			w.(http.Flusher).Flush() // forces a chunked body
		}
		fmt.Fprintf(w, "body %d", n%2)
	})
	for _, tc := range []struct {
		name, path string
		tls        bool
	}{{"plain", "/", false}, {"chunked", "/chunked", false}, {"tls", "/", true}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(h)
			if tc.tls {
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			served.Store(0)
			addr := strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://")
			res, err := Run(Options{Addr: addr, TLS: tc.tls, Path: tc.path, Conns: 4, Requests: 200})
			if err != nil {
				t.Fatal(err)
			}
			if res.Requests != 200 || res.Errors != 0 || served.Load() != 200 {
				t.Fatalf("got %d requests, %d errors, server saw %d; want 200, 0, 200", res.Requests, res.Errors, served.Load())
			}
			if len(res.Bodies) != 2 || res.P50 <= 0 || res.P99 < res.P50 {
				t.Fatalf("bodies %q, p50 %v, p99 %v", res.Bodies, res.P50, res.P99)
			}
		})
	}
}

func TestRunDurationAndErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer srv.Close()
	res, err := Run(Options{Addr: strings.TrimPrefix(srv.URL, "http://"), Conns: 2, Duration: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 0 || res.Errors == 0 {
		t.Fatalf("got %d ok and %d errors; want 0 ok and some errors", res.Requests, res.Errors)
	}
	if _, err := Run(Options{Addr: "x"}); err == nil {
		t.Fatal("a run with neither duration nor count did not fail")
	}
}

func TestReadResponseBadInput(t *testing.T) {
	for _, in := range []string{
		"",
		"HTTP/1.1 200 OK\r\n",
		"SMTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
		"HTTP/1.1 200 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
	} {
		if _, _, err := readResponse(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("readResponse(%q) did not fail", in)
		}
	}
}

func FuzzReadResponse(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	f.Add("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		status, body, err := readResponse(bufio.NewReader(strings.NewReader(in)))
		if err == nil && (status < 0 || status > 999 || len(body) > maxBody) {
			t.Fatalf("status %d, body of %d bytes accepted", status, len(body))
		}
	})
}
