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
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/bench/loadgen"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// httpBench serves two programs that answer the same request alike, the
// Go testdata/fixtures/go/httpbench and the single-threaded C
// testdata/fixtures/c/httpbench.c, natively and in keeps, and loads each
// with bench/loadgen from this process. It reports requests per second,
// latency, and the CPU the load generator used beside the server's.
//
// The baselines: a keep running one instance is compared with the native
// program on one core (Go with GOMAXPROCS=1, one C process); a keep with
// replicas = "auto" with the native program on every core (Go with its
// default GOMAXPROCS, one C process per core sharing the listening
// socket). Natively the programs end TLS themselves (Go's crypto/tls, the
// C build linked with OpenSSL); in a keep the runtime ends it.
func httpBench(t *tools) error {
	root, err := fixtures.RepoRoot()
	if err != nil {
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
	cores := runtime.NumCPU()
	fmt.Printf("\n## HTTP: requests/s on keep-alive connections for %v, bench/loadgen in the same machine (%d cores)\n\n", dur, cores)
	fmt.Printf("One row per server, runners interleaved for each program, listener and connection count. \"ratio\"\n")
	fmt.Printf("compares a one-instance keep with the native program on one core (Go GOMAXPROCS=1, one C process),\n")
	fmt.Printf("and replicas=auto with the native program on all cores (Go, or %d C processes sharing the socket).\n", cores)
	fmt.Printf("\"load CPU share\" is the load generator's CPU over the load generator's and the server's; \"server\n")
	fmt.Printf("CPU/req\" the server's CPU time per request (all its processes), which a busy machine disturbs less.\n\n")
	fmt.Printf("| program | listener | conns | runner | requests/s | p50 | p99 | load / server CPU | load CPU share | server CPU/req | ratio |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, prog := range strings.Split(*httpProgs, ",") {
		step("http: building the %s program", prog)
		var wasm, native, nativeTLS string
		switch prog {
		case "go":
			if wasm, err = fixtures.BuildGo("httpbench"); err != nil {
				return err
			}
			native = filepath.Join(t.dir, "httpbench-go-native")
			if err := goBuild(native, filepath.Join(root, "testdata/fixtures/go/httpbench"), nil); err != nil {
				return err
			}
			nativeTLS = native
		case "c":
			if wasm, err = fixtures.BuildC("httpbench"); err != nil {
				return err
			}
			src := filepath.Join(root, "testdata/fixtures/c/httpbench.c")
			native, nativeTLS = filepath.Join(t.dir, "httpbench-c-native"), filepath.Join(t.dir, "httpbench-c-native-openssl")
			if b, err := exec.Command(nativeC[0], append(nativeC[1:], "-o", native, src)...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s: %v\n%s", nativeC[0], src, err, b)
			}
			if b, err := exec.Command(nativeC[0], append(nativeC[1:], "-DHTTPBENCH_TLS", "-o", nativeTLS, src, "-lssl", "-lcrypto")...).CombinedOutput(); err != nil {
				return fmt.Errorf("%s %s with OpenSSL (apt-get install libssl-dev): %v\n%s", nativeC[0], src, err, b)
			}
		default:
			return fmt.Errorf("unknown program %q in -http-programs (go, c)", prog)
		}
		for _, prot := range []string{"tcp", "tls"} {
			bin := native
			if prot == "tls" {
				bin = nativeTLS
			}
			one, all := "native GOMAXPROCS=1", "native"
			startOne := func() (*server, error) { return startNative(bin, 1, prot == "tls", certFile, keyFile, "GOMAXPROCS=1") }
			startAll := func() (*server, error) { return startNative(bin, 1, prot == "tls", certFile, keyFile) }
			if prog == "c" {
				one, all = "native, 1 process", fmt.Sprintf("native, %d processes", cores)
				startAll = func() (*server, error) { return startNative(bin, cores, prot == "tls", certFile, keyFile) }
			}
			type runner struct {
				name string
				// auto: replicas = "auto", compared with all cores.
				auto  bool
				serve func() (*server, error)
			}
			runners := []runner{
				{one, false, startOne},
				{all, true, startAll},
				{"castellan wazero", false, func() (*server, error) { return startKeep(t, wasm, prot, "") }},
				{"castellan wazero replicas=auto", true, func() (*server, error) {
					return startKeep(t, wasm, prot, "replicas = \"auto\"\n")
				}},
			}
			if t.castellanWT != "" {
				wt := &tools{dir: t.dir, cache: t.cache, castellan: t.castellanWT}
				runners = append(runners,
					runner{"castellan wasmtime", false, func() (*server, error) {
						return startKeep(wt, wasm, prot, "", "--engine", "wasmtime")
					}},
					runner{"castellan wasmtime replicas=auto", true, func() (*server, error) {
						return startKeep(wt, wasm, prot, "replicas = \"auto\"\n", "--engine", "wasmtime")
					}})
			}
			for _, n := range []int{1, *conns} {
				var base [2]float64 // one core, all cores
				for i, r := range runners {
					step("http %s %s, %d connections: %s", prog, prot, n, r.name)
					m, err := measure(r.serve, prot == "tls", n, dur)
					if err != nil {
						return fmt.Errorf("%s %s: %w", prog, r.name, err)
					}
					workload := fmt.Sprintf("%s %s, %d connections", prog, prot, n)
					record("http", workload, r.name, "requests/s", m.rate, "1/s")
					record("http", workload, r.name, "p50", float64(m.p50.Microseconds()), "µs")
					record("http", workload, r.name, "p99", float64(m.p99.Microseconds()), "µs")
					record("http", workload, r.name, "load generator CPU share", m.loadShare(), "ratio")
					record("http", workload, r.name, "server CPU per request", m.cpuPerRequest(), "µs")
					b := 0
					if r.auto {
						b = 1
					}
					ratio := "1"
					if i < 2 {
						base[b] = m.rate
					} else {
						ratio = fmt.Sprintf("%.3f", m.rate/base[b])
						record("http", workload, r.name, "ratio to "+runners[b].name, m.rate/base[b], "ratio")
					}
					fmt.Printf("| %s | %s | %d | %s | %.0f | %s | %s | %.2f / %.2f s | %.2f | %.1f µs | %s |\n",
						prog, prot, n, r.name, m.rate, us(m.p50), us(m.p99), m.loadCPU.Seconds(), m.srvCPU.Seconds(), m.loadShare(), m.cpuPerRequest(), ratio)
				}
			}
		}
	}
	return nil
}

// measured is one server under load.
type measured struct {
	rate            float64
	requests        int
	p50, p99        time.Duration
	loadCPU, srvCPU time.Duration
}

// cpuPerRequest is the server's CPU time per request, in µs.
func (m measured) cpuPerRequest() float64 {
	if m.requests == 0 {
		return 0
	}
	return float64(m.srvCPU.Microseconds()) / float64(m.requests)
}

// loadShare is the load generator's part of the CPU both sides used.
func (m measured) loadShare() float64 {
	if m.loadCPU+m.srvCPU <= 0 {
		return 0
	}
	return m.loadCPU.Seconds() / (m.loadCPU + m.srvCPU).Seconds()
}

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

// measure starts a server, waits for it, loads it and stops it.
func measure(serve func() (*server, error), useTLS bool, conns int, dur time.Duration) (measured, error) {
	srv, err := serve()
	if err != nil {
		return measured{}, err
	}
	defer srv.stop()
	addr := srv.addr
	if err := loadgen.Wait(addr, 30*time.Second); err != nil {
		return measured{}, err
	}
	// Warm up (TLS session caches, the guest's heap), then measure.
	if _, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: useTLS, Conns: conns, Duration: dur / 10}); err != nil {
		return measured{}, err
	}
	self0, srv0 := cputime.Self(), srv.cpu()
	res, err := loadgen.Run(loadgen.Options{Addr: addr, TLS: useTLS, Conns: conns, Duration: dur})
	if err != nil {
		return measured{}, err
	}
	self1, srv1 := cputime.Self(), srv.cpu()
	if res.Errors > res.Requests/100 {
		return measured{}, fmt.Errorf("%d of %d requests to %s failed", res.Errors, res.Errors+res.Requests, addr)
	}
	return measured{rate: res.Rate(), requests: res.Requests, p50: res.P50, p99: res.P99, loadCPU: self1 - self0, srvCPU: srv1 - srv0}, nil
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

// server is the processes serving on addr.
type server struct {
	addr  string
	procs []*exec.Cmd
}

// cpu is the CPU time the server's processes used so far.
func (s *server) cpu() time.Duration {
	var d time.Duration
	for _, c := range s.procs {
		d += procCPU(c.Process.Pid)
	}
	return d
}

func (s *server) stop() {
	for _, c := range s.procs {
		c.Process.Kill()
		c.Wait()
	}
}

// startNative starts n processes of bin sharing one listening socket as
// descriptor 3.
func startNative(bin string, n int, useTLS bool, certFile, keyFile string, env ...string) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	srv := &server{addr: l.Addr().String()}
	l.Close()
	defer f.Close()
	for range n {
		cmd := exec.Command(bin)
		cmd.ExtraFiles = []*os.File{f}
		// The readiness probe's plain connections make a TLS server log
		// handshake errors: not worth showing.
		cmd.Stderr = io.Discard
		cmd.Env = append(os.Environ(), env...)
		if useTLS {
			cmd.Env = append(cmd.Env, "BENCH_TLS_CERT="+certFile, "BENCH_TLS_KEY="+keyFile)
		}
		if err := cmd.Start(); err != nil {
			srv.stop()
			return nil, err
		}
		srv.procs = append(srv.procs, cmd)
	}
	return srv, nil
}

// startKeep runs the program in a keep; extra is appended to its config,
// flags to castellan run's.
func startKeep(t *tools, wasm, prot, extra string, flags ...string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cfg := filepath.Join(t.dir, "http-"+prot+".toml")
	toml := fmt.Sprintf("%s[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = %q\naddr = \"127.0.0.1\"\nport = %d\n", extra, prot, port)
	if err := os.WriteFile(cfg, []byte(toml), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(t.castellan, append(append([]string{"run", "--cache-dir", t.cache}, flags...), "-c", cfg, wasm)...)
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &server{addr: fmt.Sprintf("127.0.0.1:%d", port), procs: []*exec.Cmd{cmd}}, nil
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
