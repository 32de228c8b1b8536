//go:build linux

package host

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
)

// waitFor polls cond until it holds (a hang catcher: 2 minutes).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(2 * time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("waiting for %s: timed out", what)
		}
	}
}

// TestWarmKeeps: with keep processes started ahead, a keep takes one
// (its log says so), runs its workload under its limits as a keep started
// for it does, and the pool fills again; the agent's Close ends the
// processes that got no keep.
func TestWarmKeeps(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pool := &keep.Process{Command: []string{exe, keepArg}, Warm: 2}
	h := newHarness(t, func(c *Config) { c.Launcher = pool })
	full := func() bool { return len(pool.Waiting()) == 2 }
	waitFor(t, "the pool", full)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	art := artifact(t, fixtures.C(t, "hello"), []byte(stdio))
	for _, backend := range []string{"nil", "sim-snp"} {
		waiting := pool.Waiting()
		v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
		k, res, out, errOut, err := h.deploy(ctx, backend, art, v, func(o *DeployOptions) {
			o.Limits = Limits{MemoryBytes: 1 << 30, OpenFiles: 64}
		})
		if err != nil || res.ExitCode != 0 || !strings.Contains(out, "hello from C") {
			t.Fatalf("%s: deploy: %v %+v %q %q", backend, err, res, out, errOut)
		}
		end := h.waitEnded(k.ID)
		if end.PID != waiting[0] {
			t.Errorf("%s: the keep ran in pid %d, not in the first process started ahead (%v)", backend, end.PID, waiting)
		}
		var log strings.Builder
		h.client.Events(ctx, k.ID, false, func(e Event) { log.WriteString(e.Message + "\n") })
		if !strings.Contains(log.String(), "keep process started ahead of its keep") {
			t.Errorf("%s: the keep's log does not say it was started ahead:\n%s", backend, log.String())
		}
		if end.State != StateExited {
			t.Errorf("%s: keep ended %s (%s)", backend, end.State, end.Reason)
		}
		waitFor(t, "the pool to fill again", full)
	}
	if !raceEnabled { // ThreadSanitizer's shadow memory does not fit the limit
		// A keep's memory limit holds in a process started ahead.
		hog := artifact(t, fixtures.Go(t, "memhog"), []byte(stdio))
		k, res, _, _, err := h.deploy(ctx, "nil", hog, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
			o.Limits = Limits{MemoryBytes: 512 << 20}
		})
		if err == nil {
			t.Fatalf("memhog ended under a 512MiB limit: %+v", res)
		}
		if end := h.waitEnded(k.ID); end.State != StateFailed || !strings.Contains(end.Reason, "memory limit of 536870912 bytes reached") {
			t.Errorf("memhog's keep ended as %s (%s)", end.State, end.Reason)
		}
		waitFor(t, "the pool to fill again", full)
	}
	waiting := pool.Waiting()
	h.stop()
	for _, pid := range waiting {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d started ahead outlived the agent's Close (%v)", pid, err)
		}
	}
}
