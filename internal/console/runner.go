package console

import (
	"context"
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
)

// Runner starts keeps. The console only needs this much of a keep manager,
// so that the local child-process runner can later give way to the host
// agent's API without touching the rest of the console.
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
}

// Keep is a started keep.
type Keep interface {
	// Report waits until the keep has written its report (the JSON of
	// `castellan run --report`) and returns it, or fails once the keep
	// ended without one or ctx is done.
	Report(ctx context.Context) ([]byte, error)
	// Stop asks the keep to end now; calling it again is harmless.
	Stop()
	// Wait waits for the keep to end and returns its exit status; -1 when
	// it was ended by a signal.
	Wait() int
}

// ProcessRunner runs each keep as a child process:
//
//	EXE run --backend B --wall-time T --max-output N [--memory M] --report FILE [-c CONFIG] app.wasm
//
// with stdout and stderr piped separately.
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
	k := &process{cmd: cmd, report: report, done: make(chan struct{})}
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
	done   chan struct{}
	code   int
	once   sync.Once
}

func (k *process) Report(ctx context.Context) ([]byte, error) {
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

func (k *process) Wait() int {
	<-k.done
	return k.code
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
