package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// httpBench serves the same Go program (testdata/fixtures/go/httpbench)
// in a keep and natively, and loads both from this process.
func httpBench(t *tools) error {
	step("http: building")
	wasm, err := fixtures.BuildGo("httpbench")
	if err != nil {
		return err
	}
	root, err := fixtures.RepoRoot()
	if err != nil {
		return err
	}
	native := filepath.Join(t.dir, "httpbench-native")
	if err := goBuild(native, filepath.Join(root, "testdata/fixtures/go/httpbench"), nil); err != nil {
		return err
	}
	certFile, keyFile, err := writeSelfSigned(t.dir)
	if err != nil {
		return err
	}
	dur := *httpDur
	if *quick {
		dur = time.Second
	}
	fmt.Printf("\n## HTTP: requests/s, %d keep-alive connections for %v, load generator in the same machine\n\n", *conns, dur)
	if t.castellanWT == "" {
		fmt.Printf("| listener | native | castellan | ratio |\n|---|---|---|---|\n")
	} else {
		fmt.Printf("| listener | native | castellan | ratio | castellan wasmtime | ratio |\n|---|---|---|---|---|---|\n")
	}
	for _, prot := range []string{"tcp", "tls"} {
		step("http %s: native", prot)
		nat, err := serveNative(native, prot == "tls", certFile, keyFile, dur)
		if err != nil {
			return err
		}
		step("http %s: castellan", prot)
		cas, err := serveKeep(t, wasm, prot, dur)
		if err != nil {
			return err
		}
		record("http", prot, "native", "requests/s", nat, "1/s")
		record("http", prot, "castellan wazero", "requests/s", cas, "1/s")
		if t.castellanWT == "" {
			fmt.Printf("| %s | %.0f | %.0f | %.3f |\n", prot, nat, cas, cas/nat)
			continue
		}
		step("http %s: castellan on wasmtime", prot)
		wt, err := serveKeep(&tools{dir: t.dir, cache: t.cache, castellan: t.castellanWT}, wasm, prot, dur, "--engine", "wasmtime")
		if err != nil {
			return err
		}
		record("http", prot, "castellan wasmtime", "requests/s", wt, "1/s")
		fmt.Printf("| %s | %.0f | %.0f | %.3f | %.0f | %.3f |\n", prot, nat, cas, cas/nat, wt, wt/nat)
	}
	return nil
}

func serveNative(bin string, useTLS bool, certFile, keyFile string, dur time.Duration) (float64, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return 0, err
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	if useTLS {
		cmd.Env = append(os.Environ(), "BENCH_TLS_CERT="+certFile, "BENCH_TLS_KEY="+keyFile)
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	f.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	return load(addr, useTLS, dur)
}

func serveKeep(t *tools, wasm, prot string, dur time.Duration, flags ...string) (float64, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cfg := filepath.Join(t.dir, "http-"+prot+".toml")
	toml := fmt.Sprintf("[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = %q\naddr = \"127.0.0.1\"\nport = %d\n", prot, port)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		return 0, err
	}
	cmd := exec.Command(t.castellan, append(append([]string{"run", "--cache-dir", t.cache}, flags...), "-c", cfg, wasm)...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	return load(fmt.Sprintf("127.0.0.1:%d", port), prot == "tls", dur)
}

// load waits for addr to answer, then sends GETs on *conns keep-alive
// connections for dur and returns requests per second.
func load(addr string, useTLS bool, dur time.Duration) (float64, error) {
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	tr := &http.Transport{
		MaxIdleConnsPerHost: *conns,
		MaxConnsPerHost:     *conns,
		// The keep's certificate is a fresh self-signed one: this measures
		// throughput, not trust (the attestation tests check trust).
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	url := scheme + "://" + addr + "/"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s never answered: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var n, fails atomic.Int64
	stop := time.Now().Add(dur)
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				resp, err := client.Get(url)
				if err != nil {
					fails.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if f := fails.Load(); f > n.Load()/100 {
		return 0, fmt.Errorf("%d of %d requests to %s failed", f, f+n.Load(), url)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

func writeSelfSigned(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "bench.crt"), filepath.Join(dir, "bench.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), 0o600)
}
