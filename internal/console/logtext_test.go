package console

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
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

// TestEventsAfterEndHangUp: a stream on a run that has ended gets what it
// has not seen and is hung up on, whatever Last-Event-ID it claims: one
// past the last event, or far beyond it, must not hold the connection (and
// the finished run behind it, up to its output limit) open for ever.
func TestEventsAfterEndHangUp(t *testing.T) {
	s, err := New(Options{Runner: &scriptedRunner{end: Ending{Code: 0}}, TempDir: t.TempDir(), ExamplesDir: t.TempDir(),
		Backends: func() []tee.Status { return []tee.Status{{Name: "nil", Usable: true}} }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const sess = "0123456789abcdef0123456789abcdef"
	rn := &run{id: newRunID(), session: sess, title: "app.wasm", backend: "nil", state: "starting",
		maxOutput: s.o.MaxOutput, timeLimit: s.o.TimeLimit, dir: t.TempDir(), ended: make(chan struct{})}
	s.mu.Lock()
	s.runs[rn.id] = rn
	s.mu.Unlock()
	if err := s.launch(rn, Job{}); err != nil {
		t.Fatal(err)
	}
	<-rn.ended
	rn.mu.Lock()
	last := len(rn.events)
	rn.mu.Unlock()
	hs := httptest.NewServer(s)
	defer hs.Close()
	for _, id := range []string{strconv.Itoa(last - 1), strconv.Itoa(last), "1000000"} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a hang-catcher
		req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/api/runs/"+rn.id+"/events", nil)
		req.AddCookie(&http.Cookie{Name: sessionCookie, Value: sess})
		req.Header.Set("Last-Event-ID", id)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("Last-Event-ID %s: %v", id, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil {
			t.Fatalf("Last-Event-ID %s: the stream was not ended: %v (got %q)", id, err, b)
		}
		if id == strconv.Itoa(last-1) && !strings.Contains(string(b), "event: end") {
			t.Errorf("Last-Event-ID %s: no end event in %q", id, b)
		}
	}
}
