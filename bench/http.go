package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"github.com/castellan-dev/castellan/internal/cputime"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/bench/loadgen"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// httpBench serves the same Go program (testdata/fixtures/go/httpbench)
// natively with GOMAXPROCS=1, natively on every core, in a keep, and in a
// keep with replicas = "auto", and
// loads each with bench/loadgen from this process. It reports requests per
// second, latency, and the CPU the load generator used beside the server's.
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
	fmt.Printf("\n## HTTP: requests/s on keep-alive connections for %v, bench/loadgen in the same machine\n\n", dur)
	fmt.Printf("Each cell: requests/s, p50 / p99 latency, load generator CPU / server CPU.\n\n")
	type runner struct {
		name  string
		serve func() (*exec.Cmd, string, error)
	}
	header := "| listener | conns | native GOMAXPROCS=1 | native | castellan | castellan replicas=auto |"
	if t.castellanWT != "" {
		header += " castellan wasmtime |"
	}
	header += " castellan / native GOMAXPROCS=1 | auto / native |"
	if t.castellanWT != "" {
		header += " wasmtime / native GOMAXPROCS=1 |"
	}
	fmt.Printf("%s\n|%s\n", header, strings.Repeat("---|", strings.Count(header, "|")-1))
	for _, prot := range []string{"tcp", "tls"} {
		for _, n := range []int{1, *conns} {
			var cells []string
			var rates []float64
			runners := []runner{
				{"native GOMAXPROCS=1", func() (*exec.Cmd, string, error) {
					return startNative(native, prot == "tls", certFile, keyFile, "GOMAXPROCS=1")
				}},
				{"native", func() (*exec.Cmd, string, error) {
					return startNative(native, prot == "tls", certFile, keyFile)
				}},
				{"castellan wazero", func() (*exec.Cmd, string, error) { return startKeep(t, wasm, prot, "") }},
				{"castellan wazero replicas=auto", func() (*exec.Cmd, string, error) {
					return startKeep(t, wasm, prot, "replicas = \"auto\"\n")
				}},
			}
			if t.castellanWT != "" {
				wt := &tools{dir: t.dir, cache: t.cache, castellan: t.castellanWT}
				runners = append(runners, runner{"castellan wasmtime", func() (*exec.Cmd, string, error) {
					return startKeep(wt, wasm, prot, "", "--engine", "wasmtime")
				}})
			}
			for _, r := range runners {
				step("http %s, %d connections: %s", prot, n, r.name)
				m, err := measure(r.serve, prot == "tls", n, dur)
				if err != nil {
					return fmt.Errorf("%s: %w", r.name, err)
				}
				workload := fmt.Sprintf("%s, %d connections", prot, n)
				record("http", workload, r.name, "requests/s", m.rate, "1/s")
				record("http", workload, r.name, "p50", float64(m.p50.Microseconds()), "µs")
				record("http", workload, r.name, "p99", float64(m.p99.Microseconds()), "µs")
				rates = append(rates, m.rate)
				cells = append(cells, m.String())
			}
			line := fmt.Sprintf("| %s | %d | %s | %.3f | %.3f |", prot, n, strings.Join(cells, " | "), rates[2]/rates[0], rates[3]/rates[1])
			if len(rates) > 4 {
				line += fmt.Sprintf(" %.3f |", rates[4]/rates[0])
			}
			fmt.Println(line)
		}
	}
	return nil
}

// measured is one server under load.
type measured struct {
	rate            float64
	p50, p99        time.Duration
	loadCPU, srvCPU time.Duration
}

func (m measured) String() string {
	return fmt.Sprintf("%.0f, %s / %s, %.2f / %.2f s", m.rate, us(m.p50), us(m.p99), m.loadCPU.Seconds(), m.srvCPU.Seconds())
}

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

// measure starts a server, waits for it, loads it and stops it.
func measure(serve func() (*exec.Cmd, string, error), useTLS bool, conns int, dur time.Duration) (measured, error) {
	cmd, addr, err := serve()
	if err != nil {
		return measured{}, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := loadgen.Wait(addr, 30*time.Second); err != nil {
		return measured{}, err
	}
	// Warm up (TLS session caches, the guest's heap), then measure.
	if _, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: useTLS, Conns: conns, Duration: dur / 10}); err != nil {
		return measured{}, err
	}
	self0, srv0 := cputime.Self(), procCPU(cmd.Process.Pid)
	res, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: useTLS, Conns: conns, Duration: dur})
	if err != nil {
		return measured{}, err
	}
	self1, srv1 := cputime.Self(), procCPU(cmd.Process.Pid)
	if res.Errors > res.Requests/100 {
		return measured{}, fmt.Errorf("%d of %d requests to %s failed", res.Errors, res.Errors+res.Requests, addr)
	}
	return measured{rate: res.Rate(), p50: res.P50, p99: res.P99, loadCPU: self1 - self0, srvCPU: srv1 - srv0}, nil
}

// procCPU is the user and system time of a running process, from
// /proc/PID/stat (zero where there is no /proc).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

func startNative(bin string, useTLS bool, certFile, keyFile string, env ...string) (*exec.Cmd, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, "", err
	}
	addr := l.Addr().String()
	l.Close()
	defer f.Close()
	cmd := exec.Command(bin)
	cmd.ExtraFiles = []*os.File{f}
	// The readiness probe's plain connections make a TLS server log
	// handshake errors: not worth showing.
	cmd.Stderr = io.Discard
	cmd.Env = append(os.Environ(), env...)
	if useTLS {
		cmd.Env = append(cmd.Env, "BENCH_TLS_CERT="+certFile, "BENCH_TLS_KEY="+keyFile)
	}
	return cmd, addr, cmd.Start()
}

// startKeep runs the program in a keep; extra is appended to its config,
// flags to castellan run's.
func startKeep(t *tools, wasm, prot, extra string, flags ...string) (*exec.Cmd, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	cfg := filepath.Join(t.dir, "http-"+prot+".toml")
	toml := fmt.Sprintf("%s[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = %q\naddr = \"127.0.0.1\"\nport = %d\n", extra, prot, port)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		return nil, "", err
	}
	cmd := exec.Command(t.castellan, append(append([]string{"run", "--cache-dir", t.cache}, flags...), "-c", cfg, wasm)...)
	cmd.Stderr = io.Discard
	return cmd, fmt.Sprintf("127.0.0.1:%d", port), cmd.Start()
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
