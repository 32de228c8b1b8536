package host

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

func TestDeployNil(t *testing.T) {
	h := newHarness(t)
	art := artifact(t, fixtures.C(t, "hello"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
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
// when the deployment asked for it.
func TestDetachedOutput(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, hostOutput := range []bool{false, true} {
		art := artifact(t, fixtures.C(t, "hello"), nil)
		arg := fmt.Sprintf("host-output-%v", hostOutput)
		k, res, _, _, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
			o.Delivery.Detach, o.Delivery.HostOutput, o.Delivery.Args = true, hostOutput, []string{arg}
		})
		if err != nil || res.Reason != "detached" {
			t.Fatalf("deploy: %v %+v", err, res)
		}
		if end := h.waitEnded(k.ID); end.State != StateExited {
			t.Errorf("detached keep ended as %s (%s)", end.State, end.Reason)
		}
		var log strings.Builder
		h.client.Events(ctx, k.ID, false, func(e Event) { log.WriteString(e.Message + "\n") })
		if got := strings.Contains(log.String(), "arg[1]="+arg); got != hostOutput {
			t.Errorf("host output %v: the agent's events hold the output: %v\n%s", hostOutput, got, log.String())
		}
	}
}
