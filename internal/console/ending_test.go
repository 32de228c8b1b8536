package console

import (
	"errors"
	"fmt"
	"testing"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/host"
)

// TestEnding: how a deployment's outcome and the agent's record become the
// page's account of the run.
func TestEnding(t *testing.T) {
	three := 3
	broken := errors.New("keep 1: connection to the keep: unexpected EOF")
	refused := fmt.Errorf("keep 1: %w", &delivery.VerificationError{Check: "chain", Reason: "unknown root"})
	cases := []struct {
		name string
		res  *delivery.Result
		err  error
		rec  *host.Keep
		want Ending
	}{
		{"exit 0", &delivery.Result{ExitCode: 0}, nil, &host.Keep{State: host.StateExited}, Ending{Code: 0}},
		{"exit 3", &delivery.Result{ExitCode: 3}, nil, nil, Ending{Code: 3}},
		{"trap", &delivery.Result{ExitCode: 1, Reason: "wasm error: unreachable"}, nil, nil, Ending{Code: 1, Error: "the workload failed: wasm error: unreachable"}},
		{"refused evidence", nil, refused, &host.Keep{State: host.StateStopped}, Ending{Code: -1, Error: refused.Error()}},
		{"refused delivery", nil, &delivery.RefusedError{Reason: "bad config"}, &host.Keep{State: host.StateFailed, Reason: "delivery refused"}, Ending{Code: -1, Error: "the keep refused the delivery: bad config"}},
		{"no keep", nil, errors.New("host agent: capacity (HTTP 503)"), nil, Ending{Code: -1, Error: "host agent: capacity (HTTP 503)"}},
		{"stopped", nil, broken, &host.Keep{State: host.StateStopped, Reason: "stopped through the API"}, Ending{Code: -1}},
		{"wall time", nil, broken, &host.Keep{State: host.StateFailed, Reason: "wall time limit of 2s reached"}, Ending{Code: -1, Limit: "time"}},
		{"exited, channel lost", nil, broken, &host.Keep{State: host.StateExited, ExitCode: &three}, Ending{Code: 3}},
		{"crashed", nil, broken, &host.Keep{State: host.StateFailed, Reason: "memory limit of 1 bytes reached"}, Ending{Code: -1, Error: "the keep failed: memory limit of 1 bytes reached"}},
		{"no record", nil, broken, nil, Ending{Code: -1, Error: broken.Error()}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := ending(c.res, c.err, c.rec); got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestAgentBackends: an agent's backends in the page's order, with the
// agent's reason for the unusable ones.
func TestAgentBackends(t *testing.T) {
	got := agentBackends(&host.HostInfo{Backends: map[string]string{
		"nil": "available", "sim-snp": "available", "snp": "no /dev/sev-guest", "zz-new": "available"}})
	want := []string{"snp false on the host agent: no /dev/sev-guest", "sim-snp true ", "nil true ", "zz-new true "}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i, st := range got {
		if s := fmt.Sprintf("%s %v %s", st.Name, st.Usable, st.Reason); s != want[i] {
			t.Errorf("backend %d: %q, want %q", i, s, want[i])
		}
	}
}
