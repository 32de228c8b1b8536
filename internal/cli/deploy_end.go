package cli

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/packages"
)

// ExitInterrupted is deploy's status when Ctrl-C (or SIGTERM) stopped the
// keep it was following, after the shells' 128 + SIGINT.
const ExitInterrupted = 130

// keepEndWait bounds how long deploy asks the agent how a keep ended after
// the connection to it broke (the agent records the end once it reaped the
// keep's process).
const keepEndWait = 30 * time.Second

// remoteEnd reports a deployment whose keep was created but whose workload
// did not report its exit: the user interrupted it, or the connection to
// the keep broke, most often because the agent stopped the keep at a limit.
// It says what ended, with run's exit statuses: 124 for the wall time, 1
// otherwise.
func remoteEnd(ctx context.Context, e *Env, c *host.Client, k *host.Keep, err error) int {
	bg := context.WithoutCancel(ctx)
	if ctx.Err() != nil {
		sctx, cancel := context.WithTimeout(bg, 15*time.Second)
		defer cancel()
		if _, serr := c.Stop(sctx, k.ID); serr != nil {
			return e.Errorf("interrupted: stopping keep %s: %v", k.ID, serr)
		}
		e.Errorf("interrupted: keep %s stopped before its workload finished", k.ID)
		return ExitInterrupted
	}
	var refused *delivery.RefusedError
	if errors.As(err, &refused) {
		// The reason can quote text the keep did not write (a secret
		// service's detail, a host path): printed escaped.
		return e.Errorf("%s", packages.Printable(err.Error()))
	}
	// Wait for the agent's record of the keep's end.
	wctx, cancel := context.WithTimeout(bg, keepEndWait)
	defer cancel()
	for {
		got, gerr := c.Get(wctx, k.ID)
		if gerr == nil && host.Terminal(got.State) {
			if strings.HasPrefix(got.Reason, "wall time limit") {
				return exitWithError(e, ExitWallTime, "keep %s: stopped: %s", k.ID, got.Reason)
			}
			if got.Reason != "" {
				return e.Errorf("keep %s: %s (%v)", k.ID, got.Reason, err)
			}
			return e.Errorf("%v", err)
		}
		select {
		case <-wctx.Done():
			return e.Errorf("%v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// exitWithError prints an error and returns code.
func exitWithError(e *Env, code int, format string, a ...any) int {
	e.Errorf(format, a...)
	return code
}
