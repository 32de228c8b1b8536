package host

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keeplog"
)

// TestOutputLimit: a detached workload with host output that prints
// without end fills its output file to the agent's limit and no further:
// the keep ends as failed, saying so, and the file stays within the limit
// plus that one line.
func TestOutputLimit(t *testing.T) {
	const limit = 4096
	h := newHarness(t, func(c *Config) { c.MaxOutput = limit })
	art := artifact(t, fixtures.Go(t, "ticker"), []byte("detached_output = \"host\"\n"+stdio))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, _, _, _, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
		o.Delivery.Detach, o.Delivery.Args = true, []string{"1ms"}
	})
	if err != nil {
		t.Fatal(err)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateFailed || end.Reason != "output limit of 4096 bytes reached" {
		t.Errorf("keep ended as %s (%s)", end.State, end.Reason)
	}
	st, err := os.Stat(keeplog.Path(h.stateDir + "/keeps/" + k.ID))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() < limit || st.Size() > limit+int64(len("keep failed: output limit of 4096 bytes reached\n")) {
		t.Errorf("output file is %d bytes, limit %d", st.Size(), limit)
	}
	var last Event
	h.client.Events(ctx, k.ID, false, func(e Event) {
		if e.Type == "log" {
			last = e
		}
	})
	if !strings.Contains(last.Message, "keep failed: output limit of 4096 bytes reached") {
		t.Errorf("last log event %q", last.Message)
	}
}
