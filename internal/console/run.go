package console

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// run is one keep started from the page, and everything the page may still
// want to know about it.
type run struct {
	id, session string
	title       string
	example     string // example ID, "" for an upload
	backend     string
	port        int // listen port of an example that serves, 0 if none
	dir         string
	maxOutput   int64
	timeLimit   time.Duration

	ended chan struct{} // closed when the run is over and its last event is in

	mu       sync.Mutex
	events   []event
	notify   chan struct{} // closed and replaced on every new event
	done     bool
	keep     Keep
	started  time.Time
	deadline time.Time
	state    string // starting, running, ended
	stopWhy  string // set when the console or the visitor stopped the keep
	stopBy   string // "time" or "output" when the console stopped it at a limit
	outBytes int64
	exit     *ExitInfo
	proof    *Proof
	lastErr  string // last "castellan: error:" line of the keep
	endedAt  time.Time

	// tail is the text of the last event while output is still merged
	// into it: an output event no stream has taken yet (its data is set
	// when it is sealed, at the latest when a stream takes it). Without
	// it a workload writing byte by byte would cost an event, some 60
	// bytes of memory, per byte of output. Guarded by mu, as is
	// followers, the event streams open on the run.
	tail      []byte
	followers int
}

type event struct {
	id   int
	name string
	data []byte
}

// ExitInfo says how a run ended.
type ExitInfo struct {
	Code    int    `json:"code"`
	Reason  string `json:"reason"` // exited, failed, time-limit, output-limit, stopped
	Message string `json:"message"`
}

// RunState is the body of GET /api/runs/{id} and of "state" events.
type RunState struct {
	ID          string    `json:"id"`
	Title       string    `json:"title"`
	Example     string    `json:"example,omitempty"` // the example's ID; empty for an upload
	Backend     string    `json:"backend"`
	State       string    `json:"state"`
	Deadline    time.Time `json:"deadline,omitzero"`
	DeadlineMS  int64     `json:"deadline_ms,omitempty"`
	NowMS       int64     `json:"now_ms"`
	TimeLimitMS int64     `json:"time_limit_ms"`
	URL         string    `json:"url,omitempty"`
	Exit        *ExitInfo `json:"exit,omitempty"`
	Proof       *Proof    `json:"proof,omitempty"`
}

func newRunID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// emit appends an event and wakes the streams. Must not hold r.mu.
func (r *run) emit(name string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]string{"error": err.Error()})
	}
	r.mu.Lock()
	r.emitLocked(name, b)
	r.mu.Unlock()
}

func (r *run) emitLocked(name string, data []byte) {
	r.sealLocked()
	r.events = append(r.events, event{id: len(r.events) + 1, name: name, data: data})
	r.wakeLocked()
}

func (r *run) wakeLocked() {
	if r.notify != nil {
		close(r.notify)
	}
	r.notify = make(chan struct{})
}

// emitOutputLocked adds text (valid UTF-8) of an output stream: to the last
// event if that is text of the same stream no stream has taken and it
// stays under maxCoalesced, else as a new event.
func (r *run) emitOutputLocked(name string, text []byte) {
	if n := len(r.events); r.tail != nil && r.events[n-1].name == name && len(r.tail)+len(text) <= maxCoalesced {
		r.tail = append(r.tail, text...)
	} else {
		r.sealLocked()
		r.events = append(r.events, event{id: n + 1, name: name})
		r.tail = append([]byte(nil), text...)
	}
	r.wakeLocked()
}

// sealLocked sets the data of the last event if output is still merged
// into it.
func (r *run) sealLocked() {
	if r.tail != nil {
		r.events[len(r.events)-1].data, _ = json.Marshal(string(r.tail))
		r.tail = nil
	}
}

// takeLocked returns the events after the first next, for a stream to
// send; they are not changed after.
func (r *run) takeLocked(next int) []event {
	r.sealLocked()
	if next < len(r.events) {
		return r.events[next:]
	}
	return nil
}

// maxFollowers bounds the event streams open on one run (a page needs
// one, a few tabs of one browser a few; each stream that takes events as
// they come costs the run an event per gatherDelay).
const maxFollowers = 8

// follow counts an event stream on the run; false when it has
// maxFollowers already. unfollow ends the count.
func (r *run) follow() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.followers >= maxFollowers {
		return false
	}
	r.followers++
	return true
}

func (r *run) unfollow() {
	r.mu.Lock()
	r.followers--
	r.mu.Unlock()
}

func (r *run) stateLocked() RunState {
	st := RunState{ID: r.id, Title: r.title, Example: r.example, Backend: r.backend, State: r.state, NowMS: time.Now().UnixMilli(),
		TimeLimitMS: r.timeLimit.Milliseconds(), Exit: r.exit, Proof: r.proof}
	if !r.deadline.IsZero() {
		st.Deadline = r.deadline
		st.DeadlineMS = r.deadline.UnixMilli()
	}
	if r.port != 0 {
		st.URL = "http://127.0.0.1:" + strconv.Itoa(r.port) + "/"
	}
	return st
}

func (r *run) emitState() {
	r.mu.Lock()
	st := r.stateLocked()
	st.Proof = nil // sent as its own event
	b, _ := json.Marshal(st)
	r.emitLocked("state", b)
	r.mu.Unlock()
}

// stop asks the keep to end, recording why; the first reason wins.
func (r *run) stop(why string) { r.stopAt("", why) }

// stopAt stops the keep at a limit ("time", "output"; "" for none).
func (r *run) stopAt(limit, why string) {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return
	}
	if r.stopWhy == "" {
		r.stopWhy, r.stopBy = why, limit
	}
	k := r.keep
	r.mu.Unlock()
	if k != nil {
		k.Stop()
	}
}

// stream is the writer of one of the keep's output streams: each write
// becomes an event, cut at UTF-8 boundaries so that the JSON carries the
// text faithfully.
type stream struct {
	r     *run
	name  string
	carry []byte
	line  []byte // partial line, to spot the keep's own error messages
}

func (w *stream) Write(p []byte) (int, error) {
	data := append(w.carry, p...)
	cut := len(data)
	for j := len(data) - 1; j >= 0 && j >= len(data)-utf8.UTFMax; j-- {
		if utf8.RuneStart(data[j]) {
			if !utf8.FullRune(data[j:]) {
				cut = j
			}
			break
		}
	}
	w.carry = append([]byte(nil), data[cut:]...)
	w.send(data[:cut])
	return len(p), nil
}

func (w *stream) flush() {
	if len(w.carry) > 0 {
		w.send(w.carry)
		w.carry = nil
	}
}

func (w *stream) send(b []byte) {
	if len(b) == 0 {
		return
	}
	r := w.r
	r.mu.Lock()
	over := false
	if room := r.maxOutput - r.outBytes; int64(len(b)) > room {
		b = b[:max(room, 0)]
		over = true
	}
	r.outBytes += int64(len(b))
	if w.name == "stderr" {
		w.scanErrors(b)
	}
	if len(b) > 0 {
		r.emitOutputLocked(w.name, []byte(strings.ToValidUTF8(string(b), "\uFFFD")))
	}
	r.mu.Unlock()
	if over {
		r.stopAt("output", fmt.Sprintf("Stopped: the output limit of %s was reached.", sizeWords(r.maxOutput)))
	}
}

// scanErrors remembers the keep's last one-line error, to say why a keep
// failed to start. Called with r.mu held.
func (w *stream) scanErrors(b []byte) {
	const prefix = "castellan: error: "
	w.line = append(w.line, b...)
	for {
		i := strings.IndexByte(string(w.line), '\n')
		if i < 0 {
			break
		}
		l := string(w.line[:i])
		w.line = w.line[i+1:]
		if strings.HasPrefix(l, prefix) {
			w.r.lastErr = strings.TrimPrefix(l, prefix)
		}
	}
	if len(w.line) > 4096 {
		w.line = w.line[len(w.line)-4096:]
	}
}

func sizeWords(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// launch starts the keep and the goroutines that follow it.
func (s *Server) launch(rn *run, job Job) error {
	out := &stream{r: rn, name: "stdout"}
	errw := &stream{r: rn, name: "stderr"}
	job.Stdout, job.Stderr = out, errw
	job.Dir = rn.dir
	job.Backend = rn.backend
	job.WallTime = s.o.TimeLimit
	job.MaxOutput = s.o.MaxOutput
	job.MaxMemory = s.o.MaxMemory
	if strings.HasPrefix(rn.backend, "sim-") {
		job.SimRoots = s.o.SimRoots
	}
	k, err := s.o.Runner.Start(job)
	if err != nil {
		return err
	}
	rn.mu.Lock()
	rn.keep = k
	rn.started = time.Now()
	rn.deadline = rn.started.Add(s.o.TimeLimit)
	rn.state = "running"
	why := rn.stopWhy
	rn.mu.Unlock()
	if why != "" {
		k.Stop()
	}
	rn.emitState()
	s.o.Log("run %s: started %s on %s", rn.id, rn.title, rn.backend)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p, err := k.Proof(ctx)
		if err != nil {
			// Cancelled: the keep ended and said nothing more.
			if !errors.Is(err, context.Canceled) {
				rn.emit("proof", map[string]string{"error": err.Error()})
			}
			return
		}
		rn.mu.Lock()
		rn.proof = p
		rn.mu.Unlock()
		rn.emit("proof", p)
	}()
	if rn.port != 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			waitListening(ctx, rn)
		}()
	}
	// The keep (or its host agent) enforces the wall time; this is the
	// backstop should it not (a keep stuck before its timer started, a
	// remote agent that ignores it).
	backstop := time.AfterFunc(s.o.TimeLimit+5*time.Second, func() {
		rn.stopAt("time", fmt.Sprintf("Stopped by the console: the time limit of %v was reached.", s.o.TimeLimit))
	})
	go func() {
		end := k.Wait()
		backstop.Stop()
		out.flush()
		errw.flush()
		// A proof that is still on its way arrives, or the wait ends
		// with the keep.
		cancel()
		wg.Wait()
		s.finish(rn, end)
	}()
	return nil
}

// waitListening tells the page once the example's port accepts connections.
func waitListening(ctx context.Context, rn *run) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(rn.port))
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		d := net.Dialer{Timeout: time.Second}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			c.Close()
			rn.emit("listen", map[string]any{"url": "http://" + addr + "/", "port": rn.port, "ready": true})
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// finish records how the keep ended and frees its slot.
func (s *Server) finish(rn *run, end Ending) {
	rn.mu.Lock()
	code := end.Code
	ex := &ExitInfo{Code: code}
	limit := end.Limit
	if rn.stopBy != "" {
		limit = rn.stopBy
	}
	// Runs stopped at a limit get the status `castellan run` gives them,
	// whoever enforced it.
	switch {
	case limit == "time":
		ex.Code, ex.Reason, ex.Message = exitWallTime, "time-limit", fmt.Sprintf("Stopped: the time limit of %v was reached.", rn.timeLimit)
	case limit == "output":
		ex.Code, ex.Reason, ex.Message = exitMaxOutput, "output-limit", fmt.Sprintf("Stopped: the output limit of %s was reached.", sizeWords(rn.maxOutput))
	case rn.stopWhy != "":
		ex.Reason, ex.Message = "stopped", rn.stopWhy
	case end.Error != "":
		ex.Reason, ex.Message = "failed", "Failed: "+end.Error
	case code == 0:
		ex.Reason, ex.Message = "exited", "Finished: the workload exited with status 0 (success)."
	case code < 0:
		ex.Reason, ex.Message = "failed", "The keep was killed by a signal."
	case rn.lastErr != "":
		ex.Reason, ex.Message = "failed", fmt.Sprintf("Failed (status %d): %s", code, rn.lastErr)
	default:
		ex.Reason, ex.Message = "exited", fmt.Sprintf("Finished: the workload exited with status %d.", code)
	}
	rn.exit = ex
	rn.state = "ended"
	rn.endedAt = time.Now()
	rn.mu.Unlock()
	// Free the slot before the page hears of the end, so that it may start
	// the next keep at once.
	os.RemoveAll(rn.dir)
	s.release(rn)
	rn.mu.Lock()
	st := rn.stateLocked()
	st.Proof = nil
	b, _ := json.Marshal(st)
	rn.emitLocked("state", b)
	b, _ = json.Marshal(ex)
	rn.emitLocked("exit", b)
	rn.done = true
	rn.emitLocked("end", []byte("{}"))
	rn.mu.Unlock()
	s.o.Log("run %s: %s", rn.id, ex.Message)
	close(rn.ended)
}

// Exit statuses of `castellan run` stopped by a limit.
const (
	exitWallTime  = 124
	exitMaxOutput = 125
)

// release frees the run's slot in the limits.
func (s *Server) release(rn *run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bySession[rn.session] == rn {
		delete(s.bySession, rn.session)
	}
	s.running--
}

// How long and how many finished runs the console keeps for the page.
const (
	keepFinished    = 10 * time.Minute
	maxFinishedRuns = 32 // each holds up to the output limit
)

// sweepLocked forgets old finished runs. Called with s.mu held.
func (s *Server) sweepLocked() {
	var finished []*run
	for id, rn := range s.runs {
		rn.mu.Lock()
		done, at := rn.done, rn.endedAt
		rn.mu.Unlock()
		if !done {
			continue
		}
		if time.Since(at) > keepFinished {
			delete(s.runs, id)
			continue
		}
		finished = append(finished, rn)
	}
	for len(finished) > maxFinishedRuns {
		oldest := 0
		for i, rn := range finished {
			if rn.endedAt.Before(finished[oldest].endedAt) {
				oldest = i
			}
		}
		delete(s.runs, finished[oldest].id)
		finished = append(finished[:oldest], finished[oldest+1:]...)
	}
}

// lookup returns the run id of the visitor's session, or nil: another
// visitor's run is as good as absent.
func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *run {
	sess, ok := sessionFrom(r)
	s.mu.Lock()
	rn := s.runs[r.PathValue("id")]
	s.mu.Unlock()
	if !ok || rn == nil || rn.session != sess {
		writeError(w, http.StatusNotFound, "", "no run %q in this browser session (runs are forgotten %v after they end)", r.PathValue("id"), keepFinished)
		return nil
	}
	return rn
}

func (s *Server) handleRun(w http.ResponseWriter, r *http.Request) {
	rn := s.lookup(w, r)
	if rn == nil {
		return
	}
	rn.mu.Lock()
	st := rn.stateLocked()
	rn.mu.Unlock()
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		writeError(w, http.StatusForbidden, "", "cross-site request refused")
		return
	}
	rn := s.lookup(w, r)
	if rn == nil {
		return
	}
	rn.stop("Stopped by you.")
	writeJSON(w, http.StatusAccepted, map[string]string{"id": rn.id})
}

// heartbeat keeps idle event streams open through proxies.
const heartbeat = 15 * time.Second

// gatherDelay is how long a stream waits after new events before it takes
// them, so that output written in small pieces meanwhile joins one event.
const gatherDelay = 50 * time.Millisecond

// handleEvents streams a run's events as Server-Sent Events, from the
// first (or after Last-Event-ID, when the browser reconnects) until "end",
// after a "clock" event with the server's time.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	rn := s.lookup(w, r)
	if rn == nil {
		return
	}
	if !rn.follow() {
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusTooManyRequests, "", "this run already has %d event streams open", maxFollowers)
		return
	}
	defer rn.unfollow()
	next := 0
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			next = n
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// The server's clock, for the page's countdown: events are replayed
	// from when they happened, so their own timestamps are not "now". It
	// has no id, so it does not move the browser's Last-Event-ID.
	fmt.Fprintf(w, "event: clock\ndata: {\"now_ms\":%d}\n\n", time.Now().UnixMilli())
	rc.Flush()
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	for {
		rn.mu.Lock()
		evs := rn.takeLocked(next)
		if len(evs) == 0 && rn.done {
			// The browser claims to have seen the end (or more
			// events than there are): nothing more will come.
			rn.mu.Unlock()
			rc.Flush()
			return
		}
		wake := rn.notify
		if wake == nil {
			wake = make(chan struct{})
			rn.notify = wake
		}
		rn.mu.Unlock()
		for _, ev := range coalesce(evs) {
			if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.id, ev.name, ev.data); err != nil {
				return
			}
			next = ev.id
			if ev.name == "end" {
				rc.Flush()
				return
			}
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-wake:
			// Let output gather into one event before taking it.
			select {
			case <-time.After(gatherDelay):
			case <-r.Context().Done():
				return
			}
		case <-t.C:
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		}
	}
}

// maxCoalesced bounds the text of one merged output message.
const maxCoalesced = 64 << 10

// coalesce merges runs of output events of one stream into one message
// carrying the id of the last, so that a workload printing line by line
// does not cost the browser one message per line. A browser that
// reconnects still gets exactly what it missed.
func coalesce(evs []event) []event {
	var out []event
	for i := 0; i < len(evs); {
		ev := evs[i]
		j := i + 1
		if ev.name == "stdout" || ev.name == "stderr" {
			var text strings.Builder
			var s string
			json.Unmarshal(ev.data, &s)
			text.WriteString(s)
			for j < len(evs) && evs[j].name == ev.name && text.Len() < maxCoalesced {
				json.Unmarshal(evs[j].data, &s)
				text.WriteString(s)
				j++
			}
			if j > i+1 {
				data, _ := json.Marshal(text.String())
				ev = event{id: evs[j-1].id, name: ev.name, data: data}
			}
		}
		out = append(out, ev)
		i = j
	}
	return out
}
