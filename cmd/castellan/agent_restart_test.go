package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/workload"
)

// agentProc is a real `castellan host serve` child process.
type agentProc struct {
	cmd    *exec.Cmd
	client *host.Client
	logged chan struct{} // closed when its stderr is read to the end
}

// kill sends SIGKILL: nothing of the agent's own shutdown runs.
func (a *agentProc) kill() {
	a.cmd.Process.Kill()
	<-a.logged
	a.cmd.Wait()
}

// startAgent starts `castellan host serve` on state and waits until it
// serves; its address comes from its own log line.
func startAgent(t *testing.T, state, token string) *agentProc {
	t.Helper()
	cmd := exec.Command("castellan", "host", "serve", "--listen", "127.0.0.1:0", "--state-dir", state)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, logged: make(chan struct{})}
	t.Cleanup(a.kill)
	addr := make(chan string, 1)
	go func() {
		defer close(a.logged)
		sc := bufio.NewScanner(stderr)
		re := regexp.MustCompile(`host agent on https://(\S+) `)
		for sc.Scan() {
			t.Logf("agent %d: %s", cmd.Process.Pid, sc.Text())
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	var url string
	select {
	case where := <-addr:
		url = "https://" + where
	case <-time.After(2 * time.Minute):
		t.Fatal("the agent did not say where it serves")
	}
	pem, err := os.ReadFile(filepath.Join(state, host.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	c, err := host.NewClient(url, token, roots)
	if err != nil {
		t.Fatal(err)
	}
	a.client = c
	return a
}

// ticks returns the numbers of the "tick N" log events, in order.
func ticks(evs []host.Event) []int {
	var out []int
	for _, e := range evs {
		if s, ok := strings.CutPrefix(e.Message, "tick "); ok && e.Type == "log" {
			n, _ := strconv.Atoi(s)
			out = append(out, n)
		}
	}
	return out
}

// waitTick follows the keep's events until one says "tick n" or later.
func waitTick(t *testing.T, c *host.Client, id string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seen := false
	c.Events(ctx, id, true, func(e host.Event) {
		if m := ticks([]host.Event{e}); len(m) == 1 && m[0] >= n {
			seen = true
			cancel()
		}
	})
	if !seen {
		t.Fatalf("keep %s: no tick %d in its events", id, n)
	}
}

// TestAgentKilledOutputSurvives: a detached workload whose config says
// detached_output = "host" prints on; the agent (a real `castellan host
// serve` process) is killed with SIGKILL mid-output; the keep goes on
// writing while no agent runs; a new agent adopts it, and every line
// appears in the keep's events exactly once, those written while no agent
// ran included.
func TestAgentKilledOutputSurvives(t *testing.T) {
	state, err := os.MkdirTemp("", "cst-restart-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	out, err := exec.Command("castellan", "host", "token", "create", "--state-dir", state).Output()
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(out))
	cfg := "detached_output = \"host\"\n[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"
	wasm, err := os.ReadFile(fixtures.Go(t, "ticker"))
	if err != nil {
		t.Fatal(err)
	}
	art, err := workload.New(wasm, []byte(cfg))
	if err != nil {
		t.Fatal(err)
	}

	first := startAgent(t, state, token)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, res, err := first.client.Deploy(ctx, host.DeployOptions{Backend: "nil", Limits: host.Limits{WallSeconds: 300},
		Verifier: &delivery.InsecureVerifier{},
		Delivery: delivery.Delivery{Artifact: art, Detach: true, Args: []string{"20ms"}}})
	if err != nil || res.Reason != "detached" {
		t.Fatalf("deploy: %v %+v", err, res)
	}
	t.Cleanup(func() { syscall.Kill(-k.PID, syscall.SIGKILL) })
	waitTick(t, first.client, k.ID, 5)

	first.kill()
	// The keep writes on with no agent: wait until its output file holds
	// 30 more ticks than the dead agent could have seen.
	var last int
	for end := time.Now().Add(2 * time.Minute); ; {
		b, _ := os.ReadFile(keeplog.Path(filepath.Join(state, "keeps", k.ID)))
		m := regexp.MustCompile(`tick (\d+)\n`).FindAllSubmatch(b, -1)
		if len(m) > 0 {
			last, _ = strconv.Atoi(string(m[len(m)-1][1]))
		}
		if last >= 40 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the keep wrote up to tick %d while no agent ran", last)
		}
		time.Sleep(50 * time.Millisecond)
	}

	second := startAgent(t, state, token)
	waitTick(t, second.client, k.ID, last+20) // written after the adoption
	if _, err := second.client.Stop(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	var evs []host.Event
	if err := second.client.Events(ctx, k.ID, false, func(e host.Event) { evs = append(evs, e) }); err != nil {
		t.Fatal(err)
	}
	got := ticks(evs)
	for i, n := range got {
		if n != i {
			t.Fatalf("tick events %v...: tick %d where %d belongs (a line lost or repeated across the restart)", got[:min(len(got), i+3)], n, i)
		}
	}
	if len(got) < last+20 {
		t.Errorf("%d tick events, want at least %d", len(got), last+20)
	}
	var adopted, tocks bool
	for _, e := range evs {
		adopted = adopted || e.Type == "adopted"
		tocks = tocks || e.Type == "log" && e.Message == fmt.Sprintf("tock %d", (last/10)*10)
	}
	if !adopted || !tocks {
		t.Errorf("adopted event %v, stderr line written while no agent ran %v", adopted, tocks)
	}
}
