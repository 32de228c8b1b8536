package console

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"unicode"

	"github.com/castellan-dev/castellan/internal/tee"
)

// scriptedRunner starts keeps that write stderr, then end as told.
type scriptedRunner struct {
	stderr string
	end    Ending
}

var _ Runner = (*scriptedRunner)(nil)

func (r *scriptedRunner) Start(job Job) (Keep, error) {
	job.Stderr.Write([]byte(r.stderr))
	return &scriptedKeep{end: r.end}, nil
}

type scriptedKeep struct{ end Ending }

func (k *scriptedKeep) Proof(ctx context.Context) (*Proof, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
func (k *scriptedKeep) Stop()        {}
func (k *scriptedKeep) Wait() Ending { return k.end }

// TestLogTextFromWorkload: what a workload or an agent says reaches the
// operator's log with control characters escaped, so that a visitor's
// workload cannot draw on the operator's terminal (escape sequences, a
// carriage return over the line) nor forge a log line of its own.
func TestLogTextFromWorkload(t *testing.T) {
	const evil = "\x1b[2J\x1b]0;owned\x07\rrun 0: Finished\u202e"
	cases := []struct {
		name   string
		runner *scriptedRunner
	}{
		{"keep's error line", &scriptedRunner{stderr: "castellan: error: " + evil + "\n", end: Ending{Code: 1}}},
		{"agent's error", &scriptedRunner{end: Ending{Code: -1, Error: evil}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var lines []string
			s, err := New(Options{Runner: c.runner, TempDir: t.TempDir(), ExamplesDir: t.TempDir(),
				Backends: func() []tee.Status { return []tee.Status{{Name: "nil", Usable: true}} },
				Log: func(f string, a ...any) {
					mu.Lock()
					lines = append(lines, fmt.Sprintf(f, a...))
					mu.Unlock()
				}})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			rn := &run{id: newRunID(), session: "s", title: "app.wasm", backend: "nil", state: "starting",
				maxOutput: s.o.MaxOutput, timeLimit: s.o.TimeLimit, dir: t.TempDir(), ended: make(chan struct{})}
			if err := s.launch(rn, Job{}); err != nil {
				t.Fatal(err)
			}
			<-rn.ended
			mu.Lock()
			defer mu.Unlock()
			found := false
			for _, l := range lines {
				if strings.ContainsFunc(l, func(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) }) {
					t.Errorf("log line with control characters: %q", l)
				}
				found = found || strings.Contains(l, `\x1b[2J`)
			}
			if !found {
				t.Errorf("the error is not in the log, escaped: %q", lines)
			}
		})
	}
}
