package host

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

func TestDeployNil(t *testing.T) {
	h := newHarness(t)
	art := artifact(t, fixtures.C(t, "hello"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, res, out, errOut, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
		o.Delivery.Args = []string{"a1"}
	})
	if err != nil {
		t.Fatalf("deploy: %v (stderr %q)", err, errOut)
	}
	if res.ExitCode != 0 || !strings.Contains(out, "hello from C in a keep") || !strings.Contains(out, "arg[1]=a1") {
		t.Fatalf("result %+v, stdout %q, stderr %q", res, out, errOut)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateExited || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Errorf("keep ended as %+v", end)
	}
	t.Logf("agent log:\n%s", h.log)
}

// TestDetachedOutput: a detached workload's output reaches the host only
// when its config says detached_output = "host". Without it, the output
// is nowhere the agent can see: not in its events, log, database or state
// folder.
func TestDetachedOutput(t *testing.T) {
	for _, c := range []struct {
		name, setting string
		toHost        bool
	}{
		{"config says host", "detached_output = \"host\"\n", true},
		{"config says discard", "detached_output = \"discard\"\n", false},
		{"config says nothing", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			art := artifact(t, fixtures.C(t, "hello"), []byte(c.setting+stdio))
			marker := fmt.Sprintf("DETACHED-OUTPUT-MARKER-%x", time.Now().UnixNano())
			k, res, _, _, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
				o.Delivery.Detach, o.Delivery.Args = true, []string{marker}
			})
			if err != nil || res.Reason != "detached" {
				t.Fatalf("deploy: %v %+v", err, res)
			}
			if end := h.waitEnded(k.ID); end.State != StateExited {
				t.Errorf("detached keep ended as %s (%s)", end.State, end.Reason)
			}
			places := h.places(ctx, k.ID)
			want := "arg[1]=" + marker
			if c.toHost {
				// The keep's log (its stderr) is the agent's record of it:
				// the "log" events, stored in the database.
				if !bytes.Contains(places["events"], []byte("log "+want)) || !bytes.Contains(places[filepath.Join(h.stateDir, DBFile)+"-wal"], []byte(want)) && !bytes.Contains(places[filepath.Join(h.stateDir, DBFile)], []byte(want)) {
					t.Errorf("the workload's output is not in the keep's log events and the database:\n%s", places["events"])
				}
				return
			}
			for where, b := range places {
				if bytes.Contains(b, []byte(marker)) {
					t.Errorf("%s holds the detached workload's output", where)
				}
			}
			if !bytes.Contains(places["events"], []byte("output is discarded")) {
				t.Errorf("the keep did not say that the output is discarded:\n%s", places["events"])
			}
		})
	}
}
