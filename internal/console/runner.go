package console

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
)

// Runner starts keeps. The console only needs this much of a keep manager:
// AgentRunner runs keeps through a host agent (in this process by default,
// or a remote one), ProcessRunner as `castellan run` child processes
// (`castellan console --direct`).
type Runner interface {
	Start(job Job) (Keep, error)
}

// Job is one keep to start.
type Job struct {
	Wasm      string // module file
	Config    string // workload config file; "" = stdin, stdout and stderr only
	Backend   string // tee backend name
	WallTime  time.Duration
	MaxOutput int64
	MaxMemory int64  // linear memory cap in bytes; 0 = the runtime's default
	Dir       string // a private folder for the keep's files (its report)
	Stdout    io.Writer
	Stderr    io.Writer
	// SimRoots returns the simulation roots trusted for the keep's
	// evidence; nil when the backend is not a simulation.
	SimRoots func() ([]*x509.Certificate, error)
}

// Keep is a started keep.
type Keep interface {
	// Proof waits until the keep's evidence is known and checked and
	// returns it for the page, or fails once the keep ended without
	// proof or ctx is done. Failed checks are reported inside the Proof
	// or as the error; never as checked.
	Proof(ctx context.Context) (*Proof, error)
	// Stop asks the keep to end now; calling it again is harmless. It
	// does not wait.
	Stop()
	// Wait waits for the keep to end and says how it ended.
	Wait() Ending
}

// Ending is how a keep ended.
type Ending struct {
	// Code is the workload's exit status; -1 when it has none (killed,
	// stopped, or it never ran).
	Code int
	// Limit is "time" or "output" when the keep was ended by that limit.
	Limit string
	// Error says why the keep failed when the workload did not run to its
	// end (the evidence was refused, the agent refused the keep, a trap).
	Error string
}

// evidenceVerifier checks evidence against the vendor roots, and against
// the simulation roots when simRoots is set.
func evidenceVerifier(simRoots func() ([]*x509.Certificate, error)) Verifier {
	return func(env *evidence.Envelope) (*evidence.Claims, error) {
		var opts verify.Options
		if simRoots != nil {
			roots, err := simRoots()
			if err != nil {
				return nil, fmt.Errorf("loading the local simulation roots: %w", err)
			}
			opts.SimRoots = roots
		}
		return verify.Envelope(env, opts)
	}
}

// ProcessRunner runs each keep as a child process, without a host agent
// (`castellan console --direct`):
//
//	EXE run --backend B --wall-time T --max-output N [--memory M] --report FILE [-c CONFIG] app.wasm
//
// with stdout and stderr piped separately. The keep enforces the limits
// itself (exit 124 at the wall time, 125 at the output limit), caps its
// linear memory, and writes a self-signed keep certificate with its
// evidence to its report; the workload travels on this machine's disk,
// not through confidential delivery.
type ProcessRunner struct {
	// Executable is the castellan binary; "" = os.Executable().
	Executable string
	// Env is the child's environment; nil = this process's.
	Env []string
}

var _ Runner = (*ProcessRunner)(nil)

// reportPollInterval is how often a waiting Report looks for the file.
const reportPollInterval = 50 * time.Millisecond

// stopGrace is how long a stopped keep has to end after SIGTERM before it
// is killed.
const stopGrace = 2 * time.Second

func (p *ProcessRunner) Start(job Job) (Keep, error) {
	exe := p.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("finding the castellan executable: %w", err)
		}
	}
	report := filepath.Join(job.Dir, "report.json")
	args := []string{"run",
		"--backend", job.Backend,
		"--wall-time", job.WallTime.String(),
		"--max-output", strconv.FormatInt(job.MaxOutput, 10),
		"--report", report,
	}
	if job.MaxMemory > 0 {
		args = append(args, "--memory", strconv.FormatInt(job.MaxMemory, 10))
	}
	if job.Config != "" {
		args = append(args, "-c", job.Config)
	}
	args = append(args, job.Wasm)
	cmd := exec.Command(exe, args...)
	cmd.Dir = job.Dir
	cmd.Env = p.Env
	cmd.Stdout, cmd.Stderr = job.Stdout, job.Stderr
	// Output pipes may be held open by nothing else; after the process ends,
	// give the copying goroutines a moment, then close.
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting keep: %w", err)
	}
	k := &process{cmd: cmd, report: report, check: evidenceVerifier(job.SimRoots), done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		k.code = cmd.ProcessState.ExitCode()
		if err != nil && k.code == 0 {
			k.code = -1
		}
		close(k.done)
	}()
	return k, nil
}

type process struct {
	cmd    *exec.Cmd
	report string
	check  Verifier
	done   chan struct{}
	code   int
	once   sync.Once
}

func (k *process) Proof(ctx context.Context) (*Proof, error) {
	b, err := k.readReport(ctx)
	if err != nil {
		return nil, err
	}
	return decodeReport(b, k.check, time.Now())
}

// readReport waits for the keep's report file.
func (k *process) readReport(ctx context.Context) ([]byte, error) {
	t := time.NewTicker(reportPollInterval)
	defer t.Stop()
	for {
		b, err := readLimited(k.report, maxReportSize)
		if err == nil {
			return b, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		select {
		case <-k.done:
			// The keep may have written it just before ending.
			if b, err := readLimited(k.report, maxReportSize); err == nil {
				return b, nil
			}
			return nil, errors.New("the keep ended before it wrote its report")
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (k *process) Stop() {
	k.once.Do(func() {
		k.cmd.Process.Signal(syscall.SIGTERM)
		go func() {
			select {
			case <-k.done:
			case <-time.After(stopGrace):
				k.cmd.Process.Kill()
			}
		}()
	})
}

func (k *process) Wait() Ending {
	<-k.done
	e := Ending{Code: k.code}
	switch k.code {
	case exitWallTime:
		e.Limit = "time"
	case exitMaxOutput:
		e.Limit = "output"
	}
	return e
}

// maxReportSize bounds what the console reads of a keep's report.
const maxReportSize = 1 << 20

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: over %d bytes", path, limit)
	}
	return b, nil
}
