package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/delivery"
)

// TestRefusalPrintedEscaped: a keep's refusal can quote text from the host
// or a secret service the host named; castellan deploy prints it escaped,
// so that it cannot draw on the terminal or print a line of its own.
func TestRefusalPrintedEscaped(t *testing.T) {
	var stderr bytes.Buffer
	e := &Env{Stdout: &bytes.Buffer{}, Stderr: &stderr}
	code := remoteEnd(context.Background(), e, nil, nil, &delivery.RefusedError{Reason: "kbs refused: x\x1b[2K\rcastellan: deployed\n"})
	if code == 0 || strings.ContainsAny(stderr.String(), "\x1b\r") || strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
