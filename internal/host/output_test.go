package host

import (
	"context"
	"fmt"
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
	// Whole lines up to the limit (a tick line is at most 12 bytes), then
	// the keep's last word.
	if st.Size() < limit-12 || st.Size() > limit+int64(len("keep failed: output limit of 4096 bytes reached\n")) {
		t.Errorf("output file is %d bytes, limit %d", st.Size(), limit)
	}
	var last Event
	h.client.Events(ctx, k.ID, false, func(e Event) {
		if e.Type == "log" {
			last = e
		}
	})
	if last.Message != "keep failed: output limit of 4096 bytes reached" {
		t.Errorf("last log event %q", last.Message)
	}
}

// BenchmarkOutputEvents: a detached workload with host output prints 5000
// lines as fast as it can; the figure is how fast the agent records them
// as events (one SQLite transaction per line, with its file offset), from
// the deployment to the keep's recorded end.
func BenchmarkOutputEvents(b *testing.B) {
	const lines = 5000
	h := newHarness(b)
	art := artifact(b, fixtures.Go(b, "ticker"), []byte("detached_output = \"host\"\n"+stdio))
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		k, _, _, _, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, func(o *DeployOptions) {
			o.Delivery.Detach, o.Delivery.Args = true, []string{"0s", fmt.Sprint(lines)}
		})
		if err != nil {
			b.Fatal(err)
		}
		h.waitEnded(k.ID)
		n := 0
		h.client.Events(ctx, k.ID, false, func(e Event) {
			if e.Type == "log" && strings.HasPrefix(e.Message, "tick ") {
				n++
			}
		})
		if n != lines {
			b.Fatalf("%d tick events, want %d", n, lines)
		}
	}
	b.ReportMetric(float64(lines*b.N)/b.Elapsed().Seconds(), "lines/s")
}
