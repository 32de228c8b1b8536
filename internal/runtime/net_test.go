package runtime

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// server runs a module whose descriptor 3 is a listener on 127.0.0.1:0 and
// returns its address and a function that waits for the run to end.
func server(t testing.TB, wasmPath, prot string, cert *tls.Certificate, args ...string) (addr string, wait func() result) {
	t.Helper()
	cfg := config.Default()
	cfg.Files = append(cfg.Files, config.File{Kind: config.KindListen, Name: "http", Prot: prot, Addr: "127.0.0.1", Port: 0})
	addrc := make(chan string, 1)
	done := make(chan result, 1)
	var stdout, stderr syncBuffer
	go func() {
		code, err := Run(context.Background(), Options{
			Name:        "server.wasm",
			Wasm:        readWasm(t, wasmPath),
			Config:      cfg,
			Args:        args,
			Stdout:      &stdout,
			Stderr:      &stderr,
			Certificate: cert,
			CacheDir:    testCache,
			OnListen:    func(_ string, a net.Addr) { addrc <- a.String() },
		})
		done <- result{code, err, stdout.String(), stderr.String()}
	}()
	select {
	case addr = <-addrc:
	case r := <-done:
		t.Fatalf("server ended before listening: %v %q", r.err, r.stderr)
	}
	return addr, func() result { return <-done }
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testCert makes a certificate for 127.0.0.1 and a pool that trusts it.
func testCert(t testing.TB) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	return cert, pool
}

func TestHTTPServerConcurrent(t *testing.T) {
	cert, pool := testCert(t)
	for _, prot := range []string{"tcp", "tls"} {
		t.Run(prot, func(t *testing.T) {
			before := runtime.NumGoroutine()
			addr, wait := server(t, fixtures.Go(t, "httpserver"), prot, cert)
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: 100}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: time.Minute}
			scheme := "http"
			if prot == "tls" {
				scheme = "https"
			}
			const clients = 50
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			start := make(chan struct{})
			for i := 0; i < clients; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					for j := 0; j < 4; j++ {
						path := fmt.Sprintf("/c%d/r%d", i, j)
						resp, err := client.Get(scheme + "://" + addr + path)
						if err != nil {
							errs <- err
							return
						}
						body, err := io.ReadAll(resp.Body)
						resp.Body.Close()
						if want := "hello from a keep: " + path + "\n"; err != nil || string(body) != want {
							errs <- fmt.Errorf("GET %s: %q, %v; want %q", path, body, err, want)
							return
						}
					}
				}()
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			resp, err := client.Get(scheme + "://" + addr + "/exit?code=3")
			if err == nil {
				resp.Body.Close()
			}
			r := wait()
			if r.err != nil || r.code != 3 {
				t.Fatalf("server: code %d, err %v, stderr %q", r.code, r.err, r.stderr)
			}
			tr.CloseIdleConnections()
			checkGoroutines(t, before)
		})
	}
}

// checkGoroutines fails if goroutines started by the run are still there
// once everything the test opened is closed. Goroutines of the test's own
// HTTP client may take a moment to go, so the count is polled.
func checkGoroutines(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n := runtime.NumGoroutine()
		if n <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines before the run, %d after:\n%s", before, n, buf)
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEcho(t *testing.T) {
	for _, tc := range []struct{ name, wasm string }{
		{"go", fixtures.Go(t, "echo")},
		{"c", fixtures.C(t, "echo")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{}
			if tc.name == "c" {
				args = []string{"3"}
			}
			addr, wait := server(t, tc.wasm, "tcp", nil, args...)
			for i := 0; i < 3; i++ {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				msg := strings.Repeat(fmt.Sprintf("line %d ", i), 10000) + "\n"
				go func() {
					io.WriteString(c, msg)
					c.(*net.TCPConn).CloseWrite()
				}()
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || string(got) != msg {
					t.Fatalf("echo %d: %d bytes, %v; want %d bytes", i, len(got), err, len(msg))
				}
			}
			if tc.name == "c" {
				r := wait()
				if r.err != nil || r.code != 0 || r.stdout != "served 3\n" {
					t.Fatalf("c echo: code %d, err %v, stdout %q stderr %q", r.code, r.err, r.stdout, r.stderr)
				}
			}
		})
	}
}

func TestConnect(t *testing.T) {
	cert, _ := testCert(t)
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Leaf.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, prot := range []string{"tcp", "tls"} {
		t.Run(prot, func(t *testing.T) {
			var ln net.Listener
			var err error
			if prot == "tls" {
				ln, err = tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}})
			} else {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
			}
			if err != nil {
				t.Fatal(err)
			}
			p := pongOnce(t, ln)
			cfg := config.Default()
			cfg.Files = append(cfg.Files, config.File{Kind: config.KindConnect, Name: "conn", Prot: prot, Host: "127.0.0.1", Port: p, CAFile: "ca.pem"})
			r := run(t, fixtures.Go(t, "connect"), Options{Config: cfg, ConfigDir: dir, Args: []string{"hi"}})
			if r.err != nil || r.code != 0 || r.stdout != "reply: pong hi\n" {
				t.Fatalf("code %d, err %v, stdout %q, stderr %q", r.code, r.err, r.stdout, r.stderr)
			}
		})
	}
}

// pongOnce answers the first connection to ln with "pong " and the line it
// read, closes ln when the test ends, and returns ln's port.
func pongOnce(t *testing.T, ln net.Listener) uint16 {
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		fmt.Fprintf(c, "pong %s", line)
	}()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// TestConnectPresentsKeepCertificate checks that a TLS connect descriptor
// authenticates the keep to the server with the keep's certificate, as an
// attested keep's peers rely on.
func TestConnectPresentsKeepCertificate(t *testing.T) {
	serverCert, _ := testCert(t)
	keepCert, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: serverCert.Leaf.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	presented := make(chan []byte, 1)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{*serverCert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			presented <- raw[0]
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := pongOnce(t, ln)
	cfg := config.Default()
	cfg.Files = append(cfg.Files, config.File{Kind: config.KindConnect, Name: "conn", Prot: "tls", Host: "127.0.0.1", Port: p, CAFile: "ca.pem"})
	r := run(t, fixtures.Go(t, "connect"), Options{Config: cfg, ConfigDir: dir, Args: []string{"hi"}, Certificate: keepCert})
	if r.err != nil || r.code != 0 || r.stdout != "reply: pong hi\n" {
		t.Fatalf("code %d, err %v, stdout %q, stderr %q", r.code, r.err, r.stdout, r.stderr)
	}
	select {
	case raw := <-presented:
		if !bytes.Equal(raw, keepCert.Leaf.Raw) {
			t.Fatal("the keep presented another certificate than its own")
		}
	default:
		t.Fatal("the keep presented no client certificate")
	}
}

func TestConfigResourceErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, port, _ := net.SplitHostPort(busy.Addr().String())
	var p uint16
	fmt.Sscan(port, &p)
	other, _ := SelfSigned()
	tlsLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*other}})
	if err != nil {
		t.Fatal(err)
	}
	defer tlsLn.Close()
	go func() {
		for {
			c, err := tlsLn.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	_, tport, _ := net.SplitHostPort(tlsLn.Addr().String())
	var tp uint16
	fmt.Sscan(tport, &tp)
	tests := []struct {
		name string
		file config.File
		want string
	}{
		{"port in use", config.File{Kind: config.KindListen, Name: "http", Prot: "tcp", Addr: "127.0.0.1", Port: p, Line: 7}, "address already in use"},
		{"missing dir", config.File{Kind: config.KindDir, Name: "/data", Path: "does-not-exist", Line: 9}, "no such file or directory"},
		{"connect refused", config.File{Kind: config.KindConnect, Name: "db", Prot: "tcp", Host: "127.0.0.1", Port: 1, Line: 3}, "connection refused"},
		{"untrusted server", config.File{Kind: config.KindConnect, Name: "api", Prot: "tls", Host: "127.0.0.1", Port: tp}, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Files = append(cfg.Files, tt.file)
			r := run(t, fixtures.Go(t, "hello"), Options{Config: cfg, ConfigDir: t.TempDir()})
			if r.err == nil {
				t.Fatal("no error")
			}
			msg := r.err.Error()
			if !strings.HasPrefix(msg, "app.wasm: descriptor 3 ") || !strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q, want one line about descriptor 3 with %q", msg, tt.want)
			}
			if tt.file.Line > 0 && !strings.Contains(msg, fmt.Sprintf("config line %d", tt.file.Line)) {
				t.Errorf("error %q does not name the config line", msg)
			}
			if r.stdout != "" {
				t.Errorf("the module ran: %q", r.stdout)
			}
		})
	}
}

func TestCancelBlockedServer(t *testing.T) {
	before := runtime.NumGoroutine()
	cfg := config.Default()
	cfg.Files = append(cfg.Files, config.File{Kind: config.KindListen, Name: "http", Prot: "tls", Addr: "127.0.0.1"})
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	var notices syncBuffer
	go func() {
		_, err := Run(ctx, Options{
			Name:     "server.wasm",
			Wasm:     readWasm(t, fixtures.Go(t, "httpserver")),
			Config:   cfg,
			CacheDir: testCache,
			OnListen: func(_ string, a net.Addr) { addrc <- a.String() },
			Log:      func(format string, args ...any) { fmt.Fprintf(&notices, format+"\n", args...) },
		})
		done <- err
	}()
	addr := <-addrc
	// A client that never finishes its handshake, and one that sends
	// garbage, must not stop the server from answering a good one.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	junk, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(junk, "GET / HTTP/1.0\r\n\r\n")
	io.Copy(io.Discard, junk)
	junk.Close()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	resp, err := (&http.Client{Transport: tr}).Get("https://" + addr + "/ok")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tr.CloseIdleConnections()
	if string(body) != "hello from a keep: /ok\n" {
		t.Errorf("body %q", body)
	}
	if !strings.Contains(notices.String(), "not attested") {
		t.Errorf("no notice about the self-signed certificate: %q", notices.String())
	}
	// The server is blocked in poll_oneoff: cancelling ends the run.
	cancel()
	err = <-done
	if err == nil || !strings.Contains(err.Error(), "interrupted") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("err %v, want a one-line interrupted error", err)
	}
	idle.Close()
	checkGoroutines(t, before)
}

func TestSlowClientDoesNotStallServer(t *testing.T) {
	cert, pool := testCert(t)
	for _, prot := range []string{"tcp", "tls"} {
		t.Run(prot, func(t *testing.T) {
			addr, wait := server(t, fixtures.Go(t, "httpserver"), prot, cert)
			// This client asks for 16 MiB and reads none of it.
			var slow net.Conn
			slow, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			if prot == "tls" {
				slow = tls.Client(slow, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
			}
			slow.SetDeadline(time.Now().Add(2 * time.Minute))
			io.WriteString(slow, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
			// Make sure the server is writing the big answer: the first bytes
			// arrive.
			if _, err := io.ReadFull(slow, make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: time.Minute}
			scheme := "http://"
			if prot == "tls" {
				scheme = "https://"
			}
			for i := 0; i < 3; i++ {
				resp, err := client.Get(scheme + addr + "/fast")
				if err != nil {
					t.Fatalf("request %d while a client stalls: %v", i, err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(body) != "hello from a keep: /fast\n" {
					t.Fatalf("body %q", body)
				}
			}
			// A client that reads gets all 16 MiB, in order.
			resp, err := client.Get(scheme + addr + "/big")
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || n != 16<<20 {
				t.Fatalf("/big: %d bytes, %v; want 16 MiB", n, err)
			}
			if resp, err := client.Get(scheme + addr + "/exit?code=0"); err == nil {
				resp.Body.Close()
			}
			tr.CloseIdleConnections()
			if r := wait(); r.err != nil || r.code != 0 {
				t.Fatalf("server: %d %v %q", r.code, r.err, r.stderr)
			}
		})
	}
}
