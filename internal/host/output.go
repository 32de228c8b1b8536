package host

import (
	"context"
	"fmt"
	"strings"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keeplog"
)

// DefaultMaxOutput bounds a keep's output file (its log lines and a
// detached workload's host output).
const DefaultMaxOutput = 64 << 20

// outputSlack is how far past the output limit the agent lets a keep's
// file grow before it stops the keep itself (a process keep stops at the
// limit on its own; the slack covers its last lines).
const outputSlack = 64 << 10

// followOutput turns the keep's output file into events, from offset (where
// the previous agent stopped) until the keep ended (l.exited) and the file
// is read. Each line is recorded with the offset after it, so an agent
// that dies loses nothing the keep writes meanwhile: the next one resumes
// there. Lines are cut at maxLogLine; "@state running" lines mark the
// workload's start; after a Go crash message the trace (stacks with
// values, memory of the keep) is not recorded.
func (a *Agent) followOutput(l *liveKeep, offset int64) {
	defer close(l.outputRead)
	id := l.id
	crashed, skipped := false, 0
	var lastSkip int64
	// A closing agent stops reading where it is; the next one resumes.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-a.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := keeplog.Follow(ctx, keeplog.Path(l.dir), offset, keeplog.FollowOptions{MaxLine: maxLogLine, Ended: l.exited},
		func(b []byte, next int64) error {
			if next > a.cfg.MaxOutput+outputSlack && l.setStop(StateFailed, fmt.Sprintf("output limit of %d bytes reached", a.cfg.MaxOutput)) {
				keep.KillGroup(l.pid, l.ticks)
			}
			line := string(b)
			if s, ok := strings.CutPrefix(line, stateLine); ok {
				if s == StateRunning {
					a.write(func() error { return a.st.setState(id, StateRunning) })
					a.logEvent(id, "running", next, "the keep checked the package and started the workload")
				} else {
					a.write(func() error { return a.st.setLogOffset(id, next) })
				}
				return nil
			}
			if crashed {
				skipped++
				lastSkip = next
				return nil
			}
			if keep.IsCrashLine(line) {
				crashed = true
				l.mu.Lock()
				l.fatal = line
				l.mu.Unlock()
			}
			a.logEvent(id, "log", next, "%s", line)
			return nil
		})
	if err != nil && ctx.Err() == nil {
		a.cfg.Logf("keep %s: reading its output: %v", id, err)
	}
	if skipped > 0 {
		a.logEvent(id, "log", lastSkip, "(%d lines of crash trace not recorded)", skipped)
	}
}

// logEvent is event for a line of the keep's output file, recorded with
// the file offset after it.
func (a *Agent) logEvent(keep, typ string, offset int64, format string, args ...any) {
	a.recordEvent(keep, typ, offset, fmt.Sprintf(format, args...))
}
