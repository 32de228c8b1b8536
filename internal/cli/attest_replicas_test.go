package cli

import (
	"bufio"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit/audittest"
	"github.com/castellan-dev/castellan/internal/attest/service"
)

// startAttestServeProcess runs "castellan attest serve" as a process of its
// own (this test binary, see TestMain), as replicas run in production.
func startAttestServeProcess(t *testing.T, dir string, extra ...string) *attestServer {
	t.Helper()
	args := append([]string{"attest", "serve", "--listen", "127.0.0.1:0", "--policy", filepath.Join(dir, "policy.toml"),
		"--measurements", filepath.Join(dir, "measurements.toml"), "--state-dir", filepath.Join(dir, "state"),
		"--reload-interval", "10ms"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "CASTELLAN_CLI_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &attestServer{lines: make(chan string, 100), done: make(chan int, 1)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		stop := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
		cmd.Wait()
		stop.Stop()
	})
	line := s.waitFor(t, "attestation service on ")
	s.url = strings.Fields(strings.SplitN(line, "attestation service on ", 2)[1])[0]
	s.caPEM = filepath.Join(dir, "state", "ca.pem")
	return s
}

// Two attest serve processes sharing one PostgreSQL, one state folder (CA
// and nonce key) and one policy act as one service: a nonce issued by one
// is redeemed at the other exactly once, and a replay at either is refused.
func TestAttestServeReplicas(t *testing.T) {
	dsn := audittest.PostgresDSN(t)
	dir, simCA := attestFiles(t)
	a := startAttestServeProcess(t, dir, "--database", dsn)
	b := startAttestServeProcess(t, dir, "--database", dsn)
	kc := newKeepClient(t, a.caPEM, simCA)
	body := kc.request(a.url, false)
	if code := kc.post(b.url+"/v1/certificate", body, nil); code != http.StatusOK {
		t.Fatalf("nonce from a redeemed at b: %d", code)
	}
	b.waitFor(t, "issued ")
	for _, s := range []*attestServer{a, b} {
		var e service.ErrorResponse
		if code := kc.post(s.url+"/v1/certificate", body, &e); code != http.StatusForbidden || e.Check != "nonce" || !strings.Contains(e.Error, "already used") {
			t.Errorf("replay at %s: %d %+v", s.url, code, e)
		}
	}
	// The nonce of b is good at a too, once.
	body = kc.request(b.url, false)
	if code := kc.post(a.url+"/v1/certificate", body, nil); code != http.StatusOK {
		t.Fatalf("nonce from b redeemed at a: %d", code)
	}
	if code := kc.post(b.url+"/v1/certificate", body, nil); code != http.StatusForbidden {
		t.Errorf("replay at b of a nonce redeemed at a: %d", code)
	}
}
