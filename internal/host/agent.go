package host

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/connlimit"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
)

// Default host maxima.
const (
	DefaultMaxKeeps      = 64
	DefaultMemoryBytes   = 4 << 30
	DefaultCPUSeconds    = 3600
	DefaultWallSeconds   = 24 * 3600
	DefaultOpenFiles     = 1024
	DefaultMaxVMMemory   = 8 << 30
	DefaultMaxVCPUs      = 8
	DefaultAttachTimeout = 2 * time.Minute
	DefaultReadyTimeout  = 30 * time.Second
)

// Config configures an Agent.
type Config struct {
	// StateDir holds the database, the TLS key and certificate, and one
	// folder per keep (its socket, exit record and temporary files).
	StateDir string
	// MaxKeeps bounds the keeps alive at once; 0 = DefaultMaxKeeps.
	MaxKeeps int
	// Max holds the host's maximum limits; zero fields take the defaults.
	// A create request above one is refused; a request that leaves a
	// limit out gets the maximum.
	Max Limits
	// Launcher starts the keeps (internal/keep: process or VM); nil = a
	// keep.Process from KeepCommand and KeepCacheDir.
	Launcher keep.Launcher
	// KeepCommand is the keep process to start, before its own flags;
	// nil = this executable with the argument "keep".
	KeepCommand []string
	// AttachTimeout is how long a ready keep waits for its client.
	AttachTimeout time.Duration
	// ReadyTimeout bounds the keep's start (evidence included).
	ReadyTimeout time.Duration
	// RetainKeeps is how many finished keeps (folder, record, events) are
	// kept, newest first; RetainFor how long after its end one is kept.
	// 0 = DefaultRetainKeeps, DefaultRetainFor.
	RetainKeeps int
	RetainFor   time.Duration
	// MaxOutput bounds each keep's output file (its log and a detached
	// workload's host output); the keep ends when it passes it. 0 =
	// DefaultMaxOutput.
	MaxOutput int64
	// KeepCacheDir is a compilation cache for keeps of the nil backend
	// only: a cache on the host's disk is readable and writable by the
	// host, so TEE keeps never get one.
	KeepCacheDir string
	// KeepEngine is the engine of process keeps ("" = wazero); see
	// keep.Process.Engine.
	KeepEngine string
	// WarmKeeps is how many process keeps wait started ahead
	// (keep.Process.Warm).
	WarmKeeps int
	// Logf receives the agent's log (never workload data); nil discards.
	Logf func(format string, a ...any)
	// RelayTap, if set, sees every buffer the relay moves (tests use it to
	// check that the agent only ever holds ciphertext).
	RelayTap func(keep string, toKeep bool, p []byte)
	// ReadTimeout bounds reading a request, body included, from its first
	// byte (the TLS handshake and the headers take at most 10 s of it);
	// IdleTimeout bounds a kept-alive connection's wait for its next
	// request. A request read whole is no longer bound (net/http lifts the
	// deadline), so event streams and the attach relay last. 0 =
	// DefaultReadTimeout, DefaultIdleTimeout.
	ReadTimeout time.Duration
	IdleTimeout time.Duration
	// StreamWriteTimeout bounds each page of an event stream's writes: a
	// client that stops reading is dropped. 0 = DefaultStreamWriteTimeout.
	StreamWriteTimeout time.Duration
	// ClientConns bounds the API connections one client address holds
	// open at once (connlimit); 0 = connlimit.DefaultPerClient, or 4 a
	// keep when MaxKeeps asks for more (one client, such as a console,
	// holds a relay and an event stream for each keep);
	// negative = no bound.
	ClientConns int
}

// Agent is the host agent: keep manager, state, and API.
type Agent struct {
	cfg         Config
	st          *store
	lock        *os.File
	launcher    keep.Launcher
	enforcement []string
	closing     chan struct{}
	closeOnce   sync.Once
	relayDrain  time.Duration // 0: relayDrain (tests shorten it)

	certOnce sync.Once
	cert     *tls.Certificate
	certErr  error

	pruneMu sync.Mutex // one removal of finished keeps at a time

	mu      sync.Mutex
	live    map[string]*liveKeep
	subs    map[string]map[chan Event]struct{}
	crashed bool
}

// liveKeep is a keep whose process the agent watches.
type liveKeep struct {
	id     string
	dir    string
	pid    int
	ticks  uint64
	what   string // "the keep process" or "the keep VM"
	limits Limits
	done   chan struct{}
	wall   *time.Timer

	mu         sync.Mutex
	stopState  string // set before the agent kills the keep
	stopReason string
	fatal      string // the first "fatal error:" line of the keep's log

	exited     chan struct{} // closed when the keep's process is gone
	outputRead chan struct{} // closed when its output file is read to the end
}

func newLiveKeep(id, dir string, lim Limits) *liveKeep {
	return &liveKeep{id: id, dir: dir, limits: lim, done: make(chan struct{}), exited: make(chan struct{}), outputRead: make(chan struct{})}
}

func (l *liveKeep) setStop(state, reason string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopState != "" {
		return false
	}
	l.stopState, l.stopReason = state, reason
	return true
}

// New opens (or creates) the agent's state and reconciles it with the
// keep processes that exist: live keeps are adopted again, dead ones get
// their exit reason recorded.
func New(cfg Config) (*Agent, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("host agent: no state folder")
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = dir
	// keeps/<12 hex>/keep.sock must fit in a Unix socket address.
	if len(filepath.Join(dir, "keeps", "000000000000")) > keep.MaxDirLen {
		return nil, fmt.Errorf("state folder %s: path too long for the keeps' Unix sockets (at most about %d bytes)", dir, keep.MaxDirLen-20)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	if err := checkStateDir(dir); err != nil {
		return nil, err
	}
	if cfg.MaxKeeps <= 0 {
		cfg.MaxKeeps = DefaultMaxKeeps
	}
	def := func(v *int64, d int64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.Max.MemoryBytes, DefaultMemoryBytes)
	def(&cfg.Max.CPUSeconds, DefaultCPUSeconds)
	def(&cfg.Max.WallSeconds, DefaultWallSeconds)
	def(&cfg.Max.OpenFiles, DefaultOpenFiles)
	def(&cfg.Max.VMMemoryBytes, DefaultMaxVMMemory)
	def(&cfg.Max.VCPUs, DefaultMaxVCPUs)
	if cfg.AttachTimeout <= 0 {
		cfg.AttachTimeout = DefaultAttachTimeout
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = DefaultReadyTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.StreamWriteTimeout <= 0 {
		cfg.StreamWriteTimeout = DefaultStreamWriteTimeout
	}
	if cfg.ClientConns == 0 {
		cfg.ClientConns = max(connlimit.DefaultPerClient, 4*cfg.MaxKeeps)
	}
	if cfg.RetainKeeps <= 0 {
		cfg.RetainKeeps = DefaultRetainKeeps
	}
	if cfg.RetainFor <= 0 {
		cfg.RetainFor = DefaultRetainFor
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if cfg.Launcher == nil {
		cfg.Launcher = &keep.Process{Command: cfg.KeepCommand, CacheDir: cfg.KeepCacheDir, Engine: cfg.KeepEngine, Warm: cfg.WarmKeeps}
	}
	if err := cfg.Launcher.Provision(); err != nil {
		return nil, fmt.Errorf("host agent: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "keeps"), 0o700); err != nil {
		return nil, fmt.Errorf("state folder: %w", err)
	}
	lock, err := lockState(dir)
	if err != nil {
		return nil, err
	}
	st, err := openStore(dir)
	if err != nil {
		lock.Close()
		return nil, err
	}
	a := &Agent{cfg: cfg, st: st, lock: lock, launcher: cfg.Launcher, closing: make(chan struct{}),
		live: map[string]*liveKeep{}, subs: map[string]map[chan Event]struct{}{}}
	a.enforcement = append(cfg.Launcher.Enforcement(),
		fmt.Sprintf("output: each keep's log and host output (keeps/ID/keep.log, read by the agent into log events) is capped at %d bytes; the keep ends when it passes the cap", cfg.MaxOutput))
	if err := a.reconcile(); err != nil {
		st.close()
		lock.Close()
		return nil, err
	}
	a.sweepOrphans()
	a.prune()
	go a.pruneLoop()
	return a, nil
}

// Enforcement says how keep limits are enforced on this host.
func (a *Agent) Enforcement() []string { return append([]string(nil), a.enforcement...) }

// Close stops the agent's own work. Keeps keep running: a restarted agent
// adopts them. Use StopKeeps first to end them.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() { close(a.closing) })
	a.mu.Lock()
	a.crashed = true // goroutines still running must not write any more
	a.mu.Unlock()
	if c, ok := a.launcher.(io.Closer); ok {
		c.Close() // keep processes started ahead that got no keep
	}
	err := a.st.close()
	a.lock.Close()
	return err
}

// StopKeeps kills every live keep and records it as stopped.
func (a *Agent) StopKeeps() {
	a.mu.Lock()
	var ls []*liveKeep
	for _, l := range a.live {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	for _, l := range ls {
		a.stop(l, StateStopped, "stopped: the agent shut down")
	}
}

func (a *Agent) stop(l *liveKeep, state, reason string) {
	if l.pid != 0 && !keep.Alive(l.pid, l.ticks) {
		// It ended on its own (a limit, a crash, its exit) and is being
		// recorded: that end stands, a late stop does not rename it.
		a.waitDone(l)
		return
	}
	l.setStop(state, reason)
	if l.pid == 0 {
		return // not started yet; start sees nothing to wait for
	}
	keep.KillGroup(l.pid, l.ticks)
	a.waitDone(l)
}

func (a *Agent) waitDone(l *liveKeep) {
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
		a.cfg.Logf("keep %s: still alive 10s after SIGKILL", l.id)
	}
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// event records and publishes an event; after Close it does nothing.
func (a *Agent) event(keep, typ, format string, args ...any) {
	a.recordEvent(keep, typ, -1, fmt.Sprintf(format, args...))
}

// recordEvent is event with, for a line of the keep's output file, the
// file offset after it (else -1).
func (a *Agent) recordEvent(keep, typ string, offset int64, msg string) {
	a.mu.Lock()
	if a.crashed {
		a.mu.Unlock()
		return
	}
	ev, err := a.st.addEvent(keep, typ, msg, offset)
	if err != nil {
		a.mu.Unlock()
		a.cfg.Logf("keep %s: recording event %s: %v", keep, typ, err)
		return
	}
	a.publishLocked(ev)
	a.mu.Unlock()
}

// publishLocked sends ev to the keep's followers; a.mu is held.
func (a *Agent) publishLocked(ev Event) {
	for ch := range a.subs[ev.Keep] {
		select {
		case ch <- ev:
		default: // a slow follower misses live events; the log has them
		}
	}
}

func (a *Agent) subscribe(keep string) (chan Event, func()) {
	ch := make(chan Event, 256)
	a.mu.Lock()
	if a.subs[keep] == nil {
		a.subs[keep] = map[chan Event]struct{}{}
	}
	a.subs[keep][ch] = struct{}{}
	a.mu.Unlock()
	return ch, func() {
		a.mu.Lock()
		delete(a.subs[keep], ch)
		if len(a.subs[keep]) == 0 {
			delete(a.subs, keep)
		}
		a.mu.Unlock()
	}
}

// write runs a state change unless the agent was closed.
func (a *Agent) write(f func() error) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.crashed {
		return errors.New("agent closed")
	}
	return f()
}

// kindFile in a keep's folder holds its kind (keep.KindProcess, keep.KindVM).
const kindFile = "kind"

// outcome is how a keep ended.
type outcome struct {
	state    string
	exitCode *int
	signal   string
	reason   string
}

func recordOutcome(r *keep.ExitRecord) outcome {
	return outcome{state: r.State, exitCode: r.ExitCode, reason: r.Reason}
}

// childOutcome decides how a child keep ended from what the agent did,
// what the keep recorded and the wait status.
func (a *Agent) childOutcome(l *liveKeep, ps *os.ProcessState) outcome {
	ws, _ := ps.Sys().(syscall.WaitStatus)
	l.mu.Lock()
	stopState, stopReason := l.stopState, l.stopReason
	l.mu.Unlock()
	sig := ""
	if ws.Signaled() {
		sig = keep.SignalName(ws.Signal())
	}
	cpuLimit := false
	if ws.Signaled() && l.limits.CPUSeconds > 0 {
		cpu := ps.UserTime() + ps.SystemTime()
		cpuLimit = keep.IsCPULimitSignal(ws.Signal()) ||
			(ws.Signal() == syscall.SIGKILL && cpu >= time.Duration(l.limits.CPUSeconds)*time.Second-100*time.Millisecond)
	}
	cpuOutcome := outcome{state: StateFailed, signal: sig,
		reason: fmt.Sprintf("cpu time limit of %ds reached (killed by signal %s)", l.limits.CPUSeconds, sig)}
	// The kernel's CPU limit wins over a stop that raced it (a client
	// whose delivery broke because the keep died stops it at once).
	if cpuLimit && stopState != StateFailed {
		return cpuOutcome
	}
	// A stop is the keep's end only if its SIGKILL ended it: a keep that
	// exited or crashed on its own while the stop was on its way (a client
	// stops a keep at once when its connection breaks, and a dying process
	// closes its sockets before it is a zombie) keeps its own end.
	if stopState != "" && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return outcome{state: stopState, reason: stopReason, signal: sig}
	}
	if r := keep.ReadExitRecord(l.dir); r != nil {
		o := recordOutcome(r)
		o.signal = sig
		return o
	}
	if cpuLimit {
		return cpuOutcome
	}
	if ws.Signaled() {
		return outcome{state: StateFailed, signal: sig, reason: "killed by signal " + sig}
	}
	code := ws.ExitStatus()
	l.mu.Lock()
	fatal := l.fatal
	l.mu.Unlock()
	if fatal != "" {
		reason, ok := keep.MemoryLimitReason(fatal, l.limits.MemoryBytes)
		if !ok {
			reason = fmt.Sprintf("%s crashed (status %d): %s", l.what, code, fatal)
		}
		return outcome{state: StateFailed, reason: reason}
	}
	return outcome{state: StateFailed, reason: fmt.Sprintf("%s exited with status %d without an exit record", l.what, code)}
}

// finish records a keep's end.
func (a *Agent) finish(l *liveKeep, o outcome) {
	if l.wall != nil {
		l.wall.Stop()
	}
	a.launcher.Cleanup(l.id, l.dir)
	err := a.write(func() error { return a.st.setEnded(l.id, o) })
	a.mu.Lock()
	delete(a.live, l.id)
	a.mu.Unlock()
	close(l.done)
	if err != nil {
		return
	}
	msg := o.state
	if o.exitCode != nil {
		msg += fmt.Sprintf(" with status %d", *o.exitCode)
	}
	if o.reason != "" {
		msg += ": " + o.reason
	}
	a.event(l.id, "ended", "%s", msg)
	a.cfg.Logf("keep %s %s", l.id, msg)
	go a.prune()
}

// reconcile adopts keeps that outlived a previous agent and records the
// end of those that did not.
func (a *Agent) reconcile() error {
	rows, err := a.st.keeps(context.Background(), `WHERE state NOT IN (?, ?, ?)`, StateExited, StateFailed, StateStopped)
	if err != nil {
		return fmt.Errorf("state database: %w", err)
	}
	for _, r := range rows {
		l := newLiveKeep(r.ID, filepath.Join(a.cfg.StateDir, "keeps", r.ID), r.Limits)
		l.pid, l.ticks, l.what = r.PID, r.startTicks, "the keep process"
		if !keep.Alive(r.PID, r.startTicks) {
			// What it wrote after the previous agent stopped reading is
			// recorded before its end.
			close(l.exited)
			a.followOutput(l, r.logOffset)
			o := outcome{state: StateFailed, reason: "the keep process ended while the agent was down, without an exit record (killed by a signal or crashed)"}
			if rec := keep.ReadExitRecord(l.dir); rec != nil {
				o = recordOutcome(rec)
			}
			a.finish(l, o)
			continue
		}
		a.mu.Lock()
		a.live[r.ID] = l
		a.mu.Unlock()
		if kind, _ := os.ReadFile(filepath.Join(l.dir, kindFile)); string(kind) == keep.KindVM {
			// The VM's channel (its delivery relay, log and exit status)
			// was held by the previous agent and cannot be taken over.
			l.what = "the keep VM (QEMU)"
			l.setStop(StateFailed, "the agent restarted: a VM keep's channel ends with the agent that launched it")
			keep.KillGroup(l.pid, l.ticks)
		} else if r.State == StateStarting {
			// Its hello went to the previous agent's pipe and is lost.
			l.setStop(StateFailed, "the agent restarted before the keep was ready")
			keep.KillGroup(l.pid, l.ticks)
		} else {
			a.event(r.ID, "adopted", "the restarted agent adopted the keep (pid %d, state %s)", r.PID, r.State)
			a.cfg.Logf("keep %s: adopted (pid %d, %s)", r.ID, r.PID, r.State)
			a.armWall(l, r.Created)
		}
		go a.followOutput(l, r.logOffset)
		go a.watchAdopted(l)
	}
	return nil
}

func (a *Agent) watchAdopted(l *liveKeep) {
	err := waitExit(l.pid, l.ticks, a.closing)
	if err != nil && errors.Is(err, errAgentClosing) {
		return
	}
	close(l.exited)
	<-l.outputRead // its last lines come before its end
	select {
	case <-a.closing:
		return
	default:
	}
	l.mu.Lock()
	stopState, stopReason := l.stopState, l.stopReason
	l.mu.Unlock()
	o := outcome{state: StateFailed, reason: "the keep process ended without an exit record (killed by a signal or crashed; the restarted agent is not its parent and cannot see the signal)"}
	if stopState != "" {
		o = outcome{state: stopState, reason: stopReason}
	} else if rec := keep.ReadExitRecord(l.dir); rec != nil {
		o = recordOutcome(rec)
	}
	a.finish(l, o)
}

var errAgentClosing = errors.New("agent closing")

// armWall kills the keep when its wall time runs out.
func (a *Agent) armWall(l *liveKeep, created time.Time) {
	if l.limits.WallSeconds <= 0 {
		return
	}
	left := time.Until(created.Add(time.Duration(l.limits.WallSeconds) * time.Second))
	l.wall = time.AfterFunc(max(left, 0), func() {
		l.setStop(StateFailed, fmt.Sprintf("wall time limit of %ds reached", l.limits.WallSeconds))
		keep.KillGroup(l.pid, l.ticks)
	})
}

// start creates a keep: folder, database row, process, hello.
func (a *Agent) start(ctx context.Context, req *CreateRequest, platform string, lim Limits) (*Keep, error) {
	a.mu.Lock()
	if len(a.live) >= a.cfg.MaxKeeps {
		a.mu.Unlock()
		return nil, errCapacity
	}
	id := newID()
	l := newLiveKeep(id, filepath.Join(a.cfg.StateDir, "keeps", id), lim)
	a.live[id] = l // reserve the slot
	a.mu.Unlock()
	fail := func(err error) (*Keep, error) {
		a.mu.Lock()
		delete(a.live, id)
		a.mu.Unlock()
		return nil, err
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return fail(err)
	}
	// A restarted agent reads the keep's kind here (see reconcile).
	if err := os.WriteFile(filepath.Join(l.dir, kindFile), []byte(a.launcher.Kind()), 0o600); err != nil {
		return fail(err)
	}
	k := &Keep{ID: id, Name: req.Name, Backend: req.Backend, Platform: platform, Digest: req.Digest, State: StateStarting,
		Limits: lim, Created: time.Now().UTC(), Enforcement: a.enforcement}
	if err := a.write(func() error { return a.st.insertKeep(k) }); err != nil {
		return fail(fmt.Errorf("state database: %w", err))
	}
	a.event(id, "created", "keep created: backend %s, package %s", req.Backend, req.Digest)

	inst, err := a.launcher.Start(ctx, keep.Spec{ID: id, Dir: l.dir, Backend: req.Backend, Nonce: req.Nonce,
		Digest: req.Digest, ClientKey: req.ClientKey, Limits: lim, AttachTimeout: a.cfg.AttachTimeout, MaxOutput: a.cfg.MaxOutput})
	if err != nil {
		return a.startFailed(l, err)
	}
	l.pid, l.ticks, l.what = inst.PID(), inst.StartTicks(), inst.What()
	a.write(func() error { return a.st.setProcess(id, l.pid, l.ticks) })
	a.armWall(l, k.Created)
	go a.followOutput(l, 0)
	go func() {
		ps := inst.Wait()
		close(l.exited)
		// The log's last lines (a crash message) come before the end.
		<-l.outputRead
		a.finish(l, a.childOutcome(l, ps))
	}()

	// Wait for the hello, the request's end or the ready timeout.
	hctx, cancel := context.WithTimeout(ctx, a.cfg.ReadyTimeout)
	hello, err := inst.Hello(hctx)
	cancel()
	if err == nil {
		_, envp, perr := delivery.ParseHello(hello)
		switch {
		case perr != nil:
			err = perr
		case string(envp.Nonce) != string(req.Nonce) || envp.WorkloadDigest != req.Digest:
			err = errors.New("the keep's evidence does not bind the requested nonce and digest")
		}
	}
	if err != nil {
		reason := fmt.Sprintf("not ready: %v", err)
		if ctx.Err() != nil {
			reason = "the client went away before the keep was ready"
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			reason = fmt.Sprintf("not ready within %v", a.cfg.ReadyTimeout)
		}
		a.stop(l, StateFailed, reason)
		return nil, fmt.Errorf("keep %s: %s", id, reason)
	}
	if err := a.write(func() error { return a.st.setReady(id, hello) }); err != nil {
		a.stop(l, StateFailed, "state database: "+err.Error())
		return nil, err
	}
	a.event(id, "ready", "evidence published (%s); waiting for the client", platform)
	a.cfg.Logf("keep %s ready (pid %d, backend %s)", id, l.pid, req.Backend)
	r, err := a.st.keep(context.Background(), id)
	if err != nil {
		return nil, err
	}
	return &r.Keep, nil
}

func (a *Agent) startFailed(l *liveKeep, err error) (*Keep, error) {
	a.finish(l, outcome{state: StateFailed, reason: err.Error()})
	return nil, err
}

var errCapacity = errors.New("capacity")
