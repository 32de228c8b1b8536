package host

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
)

// TestLoad creates 50 keeps at once, each delivered its own workload
// (the C hello with a distinct argument) on sim-snp; every one must run to
// completion with its own output and be recorded as exited.
func TestLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("load test")
	}
	const n = 50
	h := newHarness(t, func(c *Config) { c.MaxKeeps = n })
	art := artifact(t, fixtures.C(t, "hello"), nil)
	v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			arg := fmt.Sprintf("keep-%d", i)
			k, res, out, _, err := h.deploy(ctx, "sim-snp", art, v, func(o *DeployOptions) { o.Delivery.Args = []string{arg} })
			switch {
			case err != nil:
				errs[i] = err
			case res.ExitCode != 0:
				errs[i] = fmt.Errorf("exit %d (%s)", res.ExitCode, res.Reason)
			case out != "hello from C in a keep\narg[0]=main.wasm\narg[1]="+arg+"\n":
				errs[i] = fmt.Errorf("stdout %q", out)
			}
			if k != nil {
				ids[i] = k.ID
			}
		}()
	}
	wg.Wait()
	t.Logf("%d keeps deployed concurrently in %v", n, time.Since(start))
	for i, err := range errs {
		if err != nil {
			t.Errorf("keep %d: %v", i, err)
		}
	}
	for _, id := range ids {
		if id == "" {
			continue
		}
		if k := h.waitEnded(id); k.State != StateExited || *k.ExitCode != 0 {
			t.Errorf("keep %s ended as %s (%s)", id, k.State, k.Reason)
		}
	}
}

// TestSIGKILL kills a keep's process from outside: the agent reports it
// failed, with the signal.
func TestSIGKILL(t *testing.T) {
	h := newHarness(t)
	k := h.create(t, "nil", Limits{})
	if err := kill(k.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateFailed || end.Signal != "SIGKILL" || !strings.Contains(end.Reason, "killed by signal SIGKILL") {
		t.Errorf("keep ended as %s, signal %q, reason %q", end.State, end.Signal, end.Reason)
	}
}

// create makes a keep without delivering to it.
func (h *harness) create(t testing.TB, backend string, lim Limits) *Keep {
	t.Helper()
	sess, err := delivery.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	// Generous: a VM keep under TCG boots in seconds to tens of seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := h.client.Create(ctx, &CreateRequest{Backend: backend, Nonce: []byte("n0nce"), ClientKey: sess.KeyHash,
		Digest: "sha256:" + strings.Repeat("0", 64), Limits: lim})
	if err != nil {
		t.Fatal(err)
	}
	if k.State != StateReady || k.PID == 0 {
		t.Fatalf("created keep is %s, pid %d", k.State, k.PID)
	}
	return k
}

// TestStop stops a ready keep: its whole process group is gone and it is
// recorded as stopped.
func TestStop(t *testing.T) {
	h := newHarness(t)
	k := h.create(t, "nil", Limits{})
	ticks, err := keep.StartTicks(k.PID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := h.client.Stop(context.Background(), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != StateStopped || got.Reason != "stopped through the API" {
		t.Errorf("stopped keep: %s (%s)", got.State, got.Reason)
	}
	if keep.Alive(k.PID, ticks) {
		t.Errorf("keep process %d still alive after stop", k.PID)
	}
	if err := kill(-k.PID, 0); err == nil {
		t.Errorf("process group %d still exists after stop", k.PID)
	}
}

// TestLimitsEnforced checks that the OS holds the keep process to its
// limits (/proc/PID/limits) and that the CPU and wall-time limits end a
// workload that spins.
func TestLimitsEnforced(t *testing.T) {
	h := newHarness(t)
	mem := int64(1 << 30)
	if raceEnabled {
		// ThreadSanitizer's shadow memory needs more (race_test.go).
		mem = DefaultMemoryBytes
	}
	k := h.create(t, "nil", Limits{MemoryBytes: mem, CPUSeconds: 7, OpenFiles: 77})
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", k.PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Max cpu time              7                    7                    seconds",
		"Max open files            77                   77                   files",
		fmt.Sprintf("Max data size             %-20d %-20d bytes", mem, mem),
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/proc/%d/limits lacks %q:\n%s", k.PID, want, b)
		}
	}

	art := artifact(t, fixtures.Go(t, "spin"), nil)
	v := &delivery.InsecureVerifier{}
	for _, tc := range []struct {
		name   string
		lim    Limits
		reason string
	}{
		{"cpu", Limits{CPUSeconds: 1}, "cpu time limit of 1s reached"},
		{"wall", Limits{WallSeconds: 2, CPUSeconds: 30}, "wall time limit of 2s reached"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			before, err := h.client.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			k, _, _, _, err := h.deploy(ctx, "nil", art, v, func(o *DeployOptions) { o.Limits = tc.lim })
			if err == nil {
				t.Fatal("a spinning workload ended normally")
			}
			if k == nil {
				// On a slow machine the limit may end the keep before it
				// is ready: find it in the list.
				k = newKeep(t, h, before)
			}
			end := h.waitEnded(k.ID)
			if end.State != StateFailed || !strings.Contains(end.Reason, tc.reason) {
				t.Errorf("keep ended as %s (%s), want failed: %s", end.State, end.Reason, tc.reason)
			}
		})
	}
}

// newKeep returns the one keep that the agent lists and before did not.
func newKeep(t *testing.T, h *harness, before []Keep) *Keep {
	t.Helper()
	after, err := h.client.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	old := map[string]bool{}
	for _, k := range before {
		old[k.ID] = true
	}
	for i := range after {
		if !old[after[i].ID] {
			return &after[i]
		}
	}
	t.Fatal("no new keep listed")
	return nil
}

// TestRestart stops the agent abruptly with keeps in every state, changes
// the world while it is down, starts a new agent on the same state folder
// and checks that it reports every keep correctly and can still serve the
// keeps that wait for their client.
func TestRestart(t *testing.T) {
	h := newHarness(t)
	hello := artifact(t, fixtures.C(t, "hello"), nil)
	v := &delivery.InsecureVerifier{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// exited: ran to completion before the crash.
	done, _, _, _, err := h.deploy(ctx, "nil", hello, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.waitEnded(done.ID)
	// ready: created, waits for its client across the restart. Made by
	// hand so that the session (the client key) survives.
	sess, err := delivery.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte("restart-nonce")
	waiting, err := h.client.Create(ctx, &CreateRequest{Backend: "nil", Nonce: nonce, Digest: hello.Digest.String(), ClientKey: sess.KeyHash})
	if err != nil {
		t.Fatal(err)
	}
	// running: a detached spinning workload.
	spin := artifact(t, fixtures.Go(t, "spin"), nil)
	running, _, _, _, err := h.deploy(ctx, "nil", spin, v, func(o *DeployOptions) { o.Delivery.Detach = true })
	if err != nil {
		t.Fatal(err)
	}
	// killed: ready, then SIGKILLed while the agent is down.
	killed := h.create(t, "nil", Limits{})
	// timedOut: ready with a short attach timeout, which ends it while the
	// agent is down; it leaves its exit record.
	h.agent.cfg.AttachTimeout = 300 * time.Millisecond
	timedOut := h.create(t, "nil", Limits{})
	timedOutTicks := mustTicks(t, timedOut.PID)
	h.stop()

	if err := kill(killed.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Wait for the kill to land: the process becomes a zombie of this
	// test process (the agent was in-process), which the old agent's wait
	// reaps.
	for keep.Alive(killed.PID, mustTicks(t, killed.PID)) {
		time.Sleep(10 * time.Millisecond)
	}

	for keep.Alive(timedOut.PID, timedOutTicks) {
		time.Sleep(10 * time.Millisecond)
	}

	h.start()
	got := map[string]*Keep{}
	ks, err := h.client.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ks {
		got[ks[i].ID] = &ks[i]
	}
	if len(got) != 5 {
		t.Fatalf("restarted agent lists %d keeps, want 5", len(got))
	}
	if k := got[timedOut.ID]; k.State != StateFailed || k.Reason != "no client attached within 300ms" {
		t.Errorf("keep that timed out while the agent was down: %s (%s)", k.State, k.Reason)
	}
	if k := got[done.ID]; k.State != StateExited || k.ExitCode == nil || *k.ExitCode != 0 {
		t.Errorf("finished keep after restart: %+v", k)
	}
	if k := got[waiting.ID]; k.State != StateReady {
		t.Errorf("waiting keep after restart: %s (%s)", k.State, k.Reason)
	}
	if k := got[running.ID]; k.State != StateRunning {
		t.Errorf("running keep after restart: %s (%s)", k.State, k.Reason)
	}
	if k := h.waitEnded(killed.ID); k.State != StateFailed || !strings.Contains(k.Reason, "without an exit record") {
		t.Errorf("killed keep after restart: %s (%s)", k.State, k.Reason)
	}

	// The waiting keep still takes its delivery through the new agent.
	wk, err := h.client.Get(ctx, waiting.ID)
	if err != nil {
		t.Fatal(err)
	}
	hv, _, err := delivery.ParseHello(wk.Hello)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := v.Verify(ctx, hv, nonce, hello.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := h.client.Attach(ctx, waiting.ID)
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	res, err := sess.Deliver(ctx, conn, ver, delivery.Delivery{Artifact: hello, Stdout: &out})
	if err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "hello from C") {
		t.Fatalf("delivery after restart: %v, %+v, %q", err, res, out.String())
	}
	if k := h.waitEnded(waiting.ID); k.State != StateExited {
		t.Errorf("keep delivered after restart ended as %s (%s)", k.State, k.Reason)
	}
	// The adopted running keep can be stopped by the new agent.
	if k, err := h.client.Stop(ctx, running.ID); err != nil || k.State != StateStopped {
		t.Errorf("stopping the adopted keep: %v, %+v", err, k)
	}
	evs := []string{}
	h.client.Events(ctx, running.ID, false, func(e Event) { evs = append(evs, e.Type) })
	if !strings.Contains(strings.Join(evs, " "), "adopted") {
		t.Errorf("adopted keep's events: %v", evs)
	}
	if _, err := os.Stat(filepath.Join(h.stateDir, "keeps", waiting.ID)); err != nil {
		t.Error(err)
	}
}

func mustTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	ticks, err := keep.StartTicks(pid)
	if err != nil {
		return 0
	}
	return ticks
}

// TestOneAgentPerStateFolder: a second agent on the same state folder is
// refused while the first runs.
func TestOneAgentPerStateFolder(t *testing.T) {
	h := newHarness(t)
	if _, err := New(h.cfg); err == nil || !strings.Contains(err.Error(), "another host agent is using it") {
		t.Errorf("second agent: %v", err)
	}
}
