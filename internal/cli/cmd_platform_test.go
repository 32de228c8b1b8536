package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/tee"
)

func TestPlatformInfo(t *testing.T) {
	t.Setenv("CASTELLAN_CONFIG_DIR", t.TempDir())
	m, err := tee.SimMeasurement()
	if err != nil {
		t.Fatal(err)
	}

	var stdout, stderr bytes.Buffer
	if code := Main([]string{"platform", "info"}, nil, &stdout, &stderr); code != ExitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range append(tee.Names(), "sim measurement: "+m, "sim roots:", "auto:") {
		if !strings.Contains(out, want) {
			t.Errorf("text output does not contain %q:\n%s", want, out)
		}
	}

	stdout.Reset()
	if code := Main([]string{"platform", "info", "--json"}, nil, &stdout, &stderr); code != ExitOK {
		t.Fatalf("--json: exit %d, stderr %q", code, stderr.String())
	}
	var got platformInfoOutput
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("--json output is not JSON: %v", err)
	}
	if len(got.Backends) != len(tee.Names()) || got.SimMeasurement != m {
		t.Errorf("--json output %+v", got)
	}
	if strings.HasPrefix(got.Auto, "sim-") {
		t.Errorf("auto is %s", got.Auto)
	}

	stderr.Reset()
	if code := Main([]string{"platform", "info", "extra"}, nil, &stdout, &stderr); code != ExitUsage {
		t.Errorf("extra argument: exit %d, want %d", code, ExitUsage)
	}
}
