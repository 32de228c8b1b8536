package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// stopGrace is how long a workload has to end after SIGINT or SIGTERM
// closed its network descriptors before the keep process exits anyway (a
// workload computing in a loop never returns to the host on its own).
const stopGrace = 5 * time.Second

// signalStop is SIGINT or SIGTERM asking the keep to stop; it is the
// cause of the run's context.
type signalStop struct{ sig syscall.Signal }

func (s signalStop) Error() string { return "stopped by " + signalLabel(s.sig) }

// status is the exit status shells give a process ended by the signal.
func (s signalStop) status() int { return 128 + int(s.sig) }

func signalLabel(s syscall.Signal) string {
	switch s {
	case syscall.SIGINT:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return s.String()
}

// stopOnSignal returns a context that SIGINT or SIGTERM cancels, with a
// signalStop as its cause; cancelling it ends the run's blocking calls and
// closes its listeners and connections (runtime.Run). If the workload has
// not ended stopGrace later, or on a second signal, onStuck is called
// (it ends the process). release stops listening for the signals.
func stopOnSignal(parent context.Context, onStuck func(signalStop)) (ctx context.Context, release func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		var s os.Signal
		select {
		case s = <-ch:
		case <-done:
			return
		}
		stop := signalStop{s.(syscall.Signal)}
		cancel(stop)
		select {
		case <-ch:
		case <-time.After(stopGrace):
		case <-done:
			return
		}
		onStuck(stop)
	}()
	return ctx, func() {
		signal.Stop(ch)
		close(done)
		cancel(nil)
	}
}

// stoppedBy returns the signal that stopped ctx's run, if one did.
func stoppedBy(ctx context.Context) (signalStop, bool) {
	var s signalStop
	ok := errors.As(context.Cause(ctx), &s)
	return s, ok
}

// reportStop says what a signal stopped and returns the shell's status.
func reportStop(e *Env, s signalStop, name, digest string) int {
	e.Infof("%s (workload %s) %s; its listeners and connections are closed", name, digest, s)
	return s.status()
}

// errAttestTimeout names the attestation time limit and its flag.
type errAttestTimeout time.Duration

func (d errAttestTimeout) Error() string {
	return fmt.Sprintf("no certificate within the attestation time limit of %v (--attest-timeout)", time.Duration(d))
}
