package host

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// TestMemoryLimit: a workload that allocates without end is stopped by
// the keep's address-space limit, and the keep is reported failed.
func TestMemoryLimit(t *testing.T) {
	if raceEnabled {
		t.Skip("a keep under -race cannot start within a 512MiB RLIMIT_DATA (ThreadSanitizer's shadow memory)")
	}
	h := newHarness(t)
	art := artifact(t, fixtures.Go(t, "memhog"), []byte(stdio))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, res, out, errOut, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
		o.Limits = Limits{MemoryBytes: 512 << 20}
	})
	if err == nil {
		t.Fatalf("memhog ended under a 512MiB limit: %+v", res)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateFailed || !strings.Contains(end.Reason, "memory limit of 536870912 bytes reached (fatal error: ") {
		t.Errorf("keep ended as %s (%s)", end.State, end.Reason)
	}
	if !strings.Contains(out, "allocated MiB: 64") {
		t.Errorf("memhog did not get going: %q (%s)", out, errOut)
	}
	// The crash message reached the agent's log without stacks.
	var log strings.Builder
	h.client.Events(ctx, k.ID, false, func(e Event) { log.WriteString(e.Message + "\n") })
	if strings.Contains(log.String(), "goroutine ") {
		t.Errorf("the keep's crash log holds goroutine stacks:\n%s", log.String())
	}
}
