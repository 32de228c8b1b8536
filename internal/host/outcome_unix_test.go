//go:build unix

package host

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestStopRacingOwnEnd: a client stops a keep as soon as its connection
// breaks, which can be while the keep is still ending on its own (a
// crash, a limit). The stop names the end only when its SIGKILL ended the
// process; otherwise the keep's own end stands.
func TestStopRacingOwnEnd(t *testing.T) {
	run := func(script string) *os.ProcessState {
		cmd := exec.Command("sh", "-c", script)
		_ = cmd.Run()
		return cmd.ProcessState
	}
	a := &Agent{}
	for _, tc := range []struct {
		name, script, state, reason string
	}{
		{"crashed on its own", "exit 2", StateFailed, "exited with status 2"},
		{"killed by the stop", "kill -KILL $$", StateStopped, "stopped through the API"},
		{"killed by another signal", "kill -SEGV $$", StateFailed, "killed by signal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLiveKeep("k", t.TempDir(), Limits{})
			l.what = "the keep process"
			l.setStop(StateStopped, "stopped through the API")
			o := a.childOutcome(l, run(tc.script))
			if o.state != tc.state || !strings.Contains(o.reason, tc.reason) {
				t.Errorf("outcome %s (%s), want %s (%s)", o.state, o.reason, tc.state, tc.reason)
			}
		})
	}
}
