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

	cgroupDir   string
	enforcement []string
}

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
	cmd := exec.Command(p.Command[0], append(append([]string(nil), p.Command[1:]...), p.Args(s)...)...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "TMPDIR="+filepath.Join(s.Dir, "tmp"))
	cmd.SysProcAttr = ProcAttr()
	pi := &processInstance{cmd: cmd}
	// The keep's stdout and stderr append to its output file, which
	// outlives the agent.
	out, err := keeplog.Create(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("keep output file: %w", err)
	}
	defer out.Close()
	if p.cgroupDir != "" {
		if f, err := makeCgroup(p.cgroupDir, s.ID, s.Limits); err == nil {
			defer f.Close()
			intoCgroup(cmd.SysProcAttr, f)
		} else {
			fmt.Fprintf(out, "no cgroup for this keep: %v\n", err)
		}
	}
	helloR, helloW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	cmd.ExtraFiles = []*os.File{helloW}
	cmd.Stdout = out
	cmd.Stderr = out
	err = cmd.Start()
	helloW.Close()
	if err != nil {
		helloR.Close()
		removeCgroup(p.cgroupDir, s.ID)
		return nil, fmt.Errorf("starting the keep process: %w", err)
	}
	pi.hello = helloR
	pi.ticks, _ = StartTicks(cmd.Process.Pid)
	return pi, nil
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
