package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestRunSignal: SIGINT and SIGTERM end `castellan run` with one line on
// stderr saying what was stopped, and the status shells expect (130, 143);
// a serving workload's listener is closed, and a workload computing in a
// loop (which never returns to the host) is ended all the same.
func TestRunSignal(t *testing.T) {
	dir := t.TempDir()
	web := fixtures.Go(t, "httpserver")
	spin := fixtures.Go(t, "spin")
	for _, c := range []struct {
		name string
		sig  syscall.Signal
		wasm string
		code int
		line string
	}{
		// A serving workload returns once its listener is closed (on a
		// machine loaded enough to delay that past the grace, the second
		// form is said).
		{"serving SIGTERM", syscall.SIGTERM, web, 143, `^castellan: main\.wasm \(workload sha256:[0-9a-f]{64}\) stopped by SIGTERM(; it did not end within 5s,|;) its listeners and connections are closed$`},
		{"serving SIGINT", syscall.SIGINT, web, 130, `^castellan: main\.wasm \(workload sha256:[0-9a-f]{64}\) stopped by SIGINT(; it did not end within 5s,|;) its listeners and connections are closed$`},
		{"loop SIGTERM", syscall.SIGTERM, spin, 143, `^castellan: main\.wasm \(workload sha256:[0-9a-f]{64}\) stopped by SIGTERM; it did not end within 5s, its listeners and connections are closed$`},
	} {
		t.Run(c.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := l.Addr().(*net.TCPAddr).Port
			l.Close()
			cfg := filepath.Join(dir, "web.toml")
			os.WriteFile(cfg, []byte(fmt.Sprintf("[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[[files]]\nkind = \"listen\"\nname = \"http\"\nprot = \"tcp\"\naddr = \"127.0.0.1\"\nport = %d\n", port)), 0o644)
			wasm := filepath.Join(dir, "main.wasm")
			b, _ := os.ReadFile(c.wasm)
			os.WriteFile(wasm, b, 0o644)
			cmd := exec.Command("castellan", "run", "--backend", "nil", "--cache-dir", filepath.Join(dir, "cache"), "-c", cfg, wasm)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			for end := time.Now().Add(2 * time.Minute); ; {
				conn, err := net.DialTimeout("tcp", addr, time.Second)
				if err == nil {
					conn.Close()
					break
				}
				if time.Now().After(end) {
					cmd.Process.Kill()
					t.Fatalf("the workload does not listen on %s: %s", addr, stderr.String())
				}
				time.Sleep(20 * time.Millisecond)
			}
			if c.wasm == spin {
				time.Sleep(100 * time.Millisecond) // let it spin
			}
			cmd.Process.Signal(c.sig)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var err2 error
			select {
			case err2 = <-done:
			case <-time.After(2 * time.Minute):
				cmd.Process.Kill()
				t.Fatal("run did not end on " + c.sig.String())
			}
			var ee *exec.ExitError
			if !errors.As(err2, &ee) || ee.ExitCode() != c.code {
				t.Errorf("exit %v, want status %d", err2, c.code)
			}
			if !regexp.MustCompile(`(?m)`+c.line).Match(stderr.Bytes()) || bytes.Contains(stderr.Bytes(), []byte("error:")) {
				t.Errorf("stderr:\n%s\nwant a line matching %s and no error", stderr.String(), c.line)
			}
			if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				conn.Close()
				t.Errorf("%s still accepts connections", addr)
			}
		})
	}
}
