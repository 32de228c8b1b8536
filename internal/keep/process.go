package keep

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
)

// HelloFD is the descriptor on which a keep process writes its hello.
const HelloFD = 3

// MaxHello bounds the hello a launcher reads (delivery.MaxHelloSize and
// some room; the caller parses it).
const MaxHello = 1 << 20

// Process starts each keep as a child process: the keep command (this
// castellan binary with the argument "keep") with the keep's parameters as
// flags, in a process group of its own and, where cgroups v2 is writable,
// a cgroup of its own. The child sets its rlimits on itself before it
// reads any input, writes its hello to descriptor 3 and its log to stdout
// and stderr, which are its output file (internal/keeplog).
type Process struct {
	// Command is the keep process to start, before its own flags; nil =
	// this executable with the argument "keep".
	Command []string
	// CacheDir is a compilation cache for keeps of the nil backend only:
	// a cache on the host's disk is readable and writable by the host, so
	// TEE keeps never get one.
	CacheDir string
	// Engine is the engine keeps run their workload with ("" = the
	// keep's default, wazero); wasmtime needs a keep command built with
	// it (-tags wasmtime).
	Engine string
	// Warm is how many keep processes wait, started ahead with the Go
	// runtime up, for the next keeps: a keep created then skips the
	// process start (0: each keep's process starts when it is created).
	// A process started ahead joins its keep's cgroup, gets its flags and
	// sets its limits before it makes its key or reads any input, as a
	// keep process started for its keep does; until then it holds nothing.
	Warm int

	cgroupDir   string
	enforcement []string

	mu     sync.Mutex
	pool   []*warmProc
	closed bool
}

// WarmFlag is the keep command's only flag for a process started ahead of
// its keep (Process.Warm): it then waits for its keep (AwaitKeep).
const WarmFlag = "--warm"

// maxWarmMessage bounds the flags a process started ahead receives.
const maxWarmMessage = 64 << 10

var _ Launcher = (*Process)(nil)

// Kind implements Launcher.
func (p *Process) Kind() string { return KindProcess }

// Provision implements Launcher: it finds the keep command and whether
// keeps get a cgroup.
func (p *Process) Provision() error {
	if p.Command == nil {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("process keeps: finding this executable: %w", err)
		}
		p.Command = []string{exe, "keep"}
	}
	cg, why := cgroupStatus()
	p.cgroupDir = cg
	p.enforcement = []string{
		"rlimits: RLIMIT_DATA (memory_bytes), RLIMIT_CPU (cpu_seconds), RLIMIT_NOFILE (open_files), set by the keep process on itself before it reads any input",
		"wall time: the agent kills the keep's process group at created + wall_seconds",
		why,
	}
	if p.Warm > 0 {
		p.enforcement = append(p.enforcement, fmt.Sprintf("%d keep processes wait started ahead; each joins its keep's cgroup and sets its rlimits when it gets its keep", p.Warm))
		for range p.Warm {
			go p.refill()
		}
	}
	return nil
}

// Available implements Launcher: the backend must work on this machine.
func (p *Process) Available(backend string) error {
	b, err := tee.New(backend)
	if err != nil {
		return err
	}
	return b.Available()
}

// Enforcement implements Launcher.
func (p *Process) Enforcement() []string { return append([]string(nil), p.enforcement...) }

// Args returns the keep process's flags for s: the contract between a
// launcher and `castellan keep`.
func (p *Process) Args(s Spec) []string {
	limJSON, _ := json.Marshal(s.Limits)
	args := []string{"--dir", s.Dir, "--backend", s.Backend, "--nonce", hex.EncodeToString(s.Nonce),
		"--digest", s.Digest, "--client-key", hex.EncodeToString(s.ClientKey), "--limits", string(limJSON),
		"--attach-timeout", s.AttachTimeout.String()}
	if s.MaxOutput > 0 {
		args = append(args, "--max-output", strconv.FormatInt(s.MaxOutput, 10))
	}
	if s.SecretServiceURL != "" {
		args = append(args, "--secret-service", s.SecretServiceURL)
		if s.SecretServiceCA != "" {
			args = append(args, "--secret-service-ca", s.SecretServiceCA)
		}
	}
	if len(s.Volumes) > 0 {
		vb, _ := json.Marshal(s.Volumes)
		args = append(args, "--volumes", string(vb))
	}
	if p.Engine != "" {
		args = append(args, "--engine", p.Engine)
	}
	if s.Backend == "nil" && p.CacheDir != "" {
		args = append(args, "--cache-dir", p.CacheDir)
	}
	return args
}

// Start implements Launcher. The keep's temporary files go to Dir/tmp.
func (p *Process) Start(ctx context.Context, s Spec) (Instance, error) {
	if p.Command == nil {
		return nil, errors.New("process keeps: not provisioned")
	}
	if err := CheckDir(s.Dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(s.Dir, "tmp"), 0o700); err != nil {
		return nil, err
	}
	if w := p.take(); w != nil {
		go p.refill()
		if inst, err := p.startAhead(w, s); err == nil {
			return inst, nil
		}
		// A process started ahead that cannot take its keep (it died):
		// start one for it as if there had been none.
		w.discard()
	}
	f, err := p.keepFiles(s)
	if err != nil {
		return nil, err
	}
	defer f.close()
	cmd := exec.Command(p.Command[0], append(append([]string(nil), p.Command[1:]...), p.Args(s)...)...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(s.Dir, "tmp"))
	cmd.SysProcAttr = ProcAttr()
	if f.cgroup != nil {
		intoCgroup(cmd.SysProcAttr, f.cgroup)
	}
	// The keep's stdout and stderr append to its output file, which
	// outlives the agent.
	cmd.ExtraFiles = []*os.File{f.helloW}
	cmd.Stdout = f.out
	cmd.Stderr = f.out
	if err := cmd.Start(); err != nil {
		f.fail(p, s)
		return nil, fmt.Errorf("starting the keep process: %w", err)
	}
	ticks, _ := StartTicks(cmd.Process.Pid)
	return &processInstance{cmd: cmd, ticks: ticks, hello: f.helloR}, nil
}

// startAhead gives the keep s to the process w started ahead.
func (p *Process) startAhead(w *warmProc, s Spec) (Instance, error) {
	f, err := p.keepFiles(s)
	if err != nil {
		return nil, err
	}
	defer f.close()
	cgroup := ""
	if f.cgroup != nil {
		cgroup = filepath.Join(p.cgroupDir, s.ID)
	}
	if err := w.assign(cgroup, p.Args(s), f.out, f.helloW); err != nil {
		f.fail(p, s)
		return nil, err
	}
	return &processInstance{cmd: w.cmd, ticks: w.ticks, hello: f.helloR}, nil
}

// keepFiles are what a keep process starts with: its output file, its
// cgroup (nil when there is none: why is noted in the output file) and its
// hello pipe. close closes the launcher's copies once the process has
// them; fail undoes the rest when it did not start.
type keepFiles struct {
	out, cgroup, helloR, helloW *os.File
}

func (p *Process) keepFiles(s Spec) (*keepFiles, error) {
	out, err := keeplog.Create(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("keep output file: %w", err)
	}
	f := &keepFiles{out: out}
	if p.cgroupDir != "" {
		if f.cgroup, err = makeCgroup(p.cgroupDir, s.ID, s.Limits); err != nil {
			fmt.Fprintf(out, "no cgroup for this keep: %v\n", err)
		}
	}
	if f.helloR, f.helloW, err = os.Pipe(); err != nil {
		f.close()
		f.fail(p, s)
		return nil, fmt.Errorf("pipe: %w", err)
	}
	return f, nil
}

func (f *keepFiles) close() {
	f.out.Close()
	if f.cgroup != nil {
		f.cgroup.Close()
	}
	if f.helloW != nil {
		f.helloW.Close()
	}
}

func (f *keepFiles) fail(p *Process, s Spec) {
	if f.helloR != nil {
		f.helloR.Close()
	}
	if f.cgroup != nil {
		removeCgroup(p.cgroupDir, s.ID)
	}
}

// Waiting returns the pids of the processes started ahead that wait for a
// keep.
func (p *Process) Waiting() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	pids := make([]int, len(p.pool))
	for i, w := range p.pool {
		pids[i] = w.cmd.Process.Pid
	}
	return pids
}

// take returns a process started ahead, or nil.
func (p *Process) take() *warmProc {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pool) == 0 {
		return nil
	}
	w := p.pool[0]
	p.pool = p.pool[1:]
	return w
}

// refill starts one process ahead for the pool.
func (p *Process) refill() {
	w, err := p.startWarm()
	if err != nil {
		return // the next keeps start their own process
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		go w.discard()
		return
	}
	p.pool = append(p.pool, w)
}

// Close ends the processes started ahead that got no keep (keeps already
// started are not touched). The launcher starts no more of them.
func (p *Process) Close() error {
	p.mu.Lock()
	ws := p.pool
	p.pool, p.closed = nil, true
	p.mu.Unlock()
	for _, w := range ws {
		w.discard()
	}
	return nil
}

type processInstance struct {
	cmd      *exec.Cmd
	ticks    uint64
	hello    *os.File
	waitOnce sync.Once
}

var _ Instance = (*processInstance)(nil)

func (pi *processInstance) PID() int           { return pi.cmd.Process.Pid }
func (pi *processInstance) StartTicks() uint64 { return pi.ticks }
func (pi *processInstance) What() string       { return "the keep process" }

func (pi *processInstance) Hello(ctx context.Context) ([]byte, error) {
	defer pi.hello.Close()
	if d, ok := ctx.Deadline(); ok {
		pi.hello.SetReadDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { pi.hello.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := io.ReadAll(io.LimitReader(pi.hello, MaxHello+1))
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if len(b) == 0 {
		return nil, ErrNotReady
	}
	return b, nil
}

func (pi *processInstance) Wait() *os.ProcessState {
	pi.waitOnce.Do(func() { pi.cmd.Wait() })
	return pi.cmd.ProcessState
}

// Cleanup implements Launcher.
func (p *Process) Cleanup(id, dir string) {
	os.Remove(filepath.Join(dir, SocketFile))
	os.RemoveAll(filepath.Join(dir, "tmp"))
	removeCgroup(p.cgroupDir, id)
}
