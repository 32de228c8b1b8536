package host

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/runtime"
	"github.com/castellan-dev/castellan/internal/strictjson"
	"github.com/castellan-dev/castellan/internal/tee"
)

// The keep process's side of its contract with the launcher
// (internal/keep): files in its folder (state dir/keeps/ID), its hello
// descriptor, its log.
const (
	keepSocket = keep.SocketFile // the keep's relay endpoint, one connection
	helloFD    = keep.HelloFD    // the pipe the keep writes its hello to
	stateLine  = keep.StateLine  // a stderr line that reports a state change
	maxLogLine = keep.MaxLogLine // longer keep log lines are cut
)

// ExitRecord is how a keep ended: a process keep writes it to exit.json
// before it exits, a VM keep sends it as its last frame.
type ExitRecord = keep.ExitRecord

// KeepParams are the parameters of one keep, as the agent gives them (to
// a process keep as flags, to a VM keep over its channel): the launcher's
// keep.Spec (of which a keep uses Backend, Nonce, Digest, ClientKey,
// Limits and AttachTimeout) and how this keep runs its workload.
type KeepParams struct {
	keep.Spec
	// CacheDir is the compilation cache (insecure keeps only).
	CacheDir string
	// Engine runs the workload ("" = the default engine, see
	// runtime.Options.Engine).
	Engine string
	// SecretService is where the keep fetches its config's [secrets.kbs]
	// (the host's launcher names it; a client cannot).
	SecretService *delivery.SecretService
	// Evidence, if set, is the backend to use instead of tee.Open(Backend)
	// (a VM keep of a simulated backend, with the CA from its channel).
	Evidence tee.Backend
	// ApplyLimits applies Limits to the keep itself; nil = setrlimit on this
	// process.
	ApplyLimits func(Limits) error
}

// KeepIO are a keep's channels to the agent.
type KeepIO struct {
	// Logf writes one line of the keep's log (never workload data).
	Logf func(format string, a ...any)
	// State reports a state change (StateRunning).
	State func(state string)
	// Hello publishes the keep's hello (JSON of delivery.Hello).
	Hello func(hello []byte) error
	// Accept returns the relayed connection of the client, waiting at most
	// timeout.
	Accept func(timeout time.Duration) (net.Conn, error)
	// HostOutput receives a detached workload's output when its config
	// sends it to the host.
	HostOutput io.Writer
	// Ended records how the keep ended, before RunKeep returns or
	// Terminate is called. It may be called twice (the wall-time timer
	// racing the keep's own end): only the first call may count.
	Ended func(ExitRecord)
	// Terminate ends the keep at once with status (the workload was
	// aborted, or the wall time passed); it does not return.
	Terminate func(status int)
}

// KeepMain is the keep process that the agent starts (`castellan keep`,
// re-executing its own binary). It applies its limits to itself, makes
// its key and evidence, writes its hello to descriptor 3, waits on its
// socket for one relayed connection and serves one delivery. Its stderr is
// the agent's log of the keep (its output file, keeplog): it never carries
// workload data (unless a detached workload asked for host output), and
// the keep ends when it passes --max-output bytes.
//
// Started ahead of its keep (keep.WarmFlag, keep.Process.Warm), it first
// waits for its keep's flags, output file and hello pipe, and exits
// quietly when the agent goes away without one.
func KeepMain(args []string, stderr io.Writer) int {
	ahead := len(args) == 1 && args[0] == keep.WarmFlag
	if ahead {
		var err error
		if args, err = keep.AwaitKeep(); err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintf(stderr, "keep failed: %v\n", err)
			return 1
		}
		stderr = os.Stderr // now the keep's output file
	}
	fs := flag.NewFlagSet("castellan keep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "the keep's folder")
	backend := fs.String("backend", "", "TEE backend")
	nonce := fs.String("nonce", "", "hex nonce to bind")
	digest := fs.String("digest", "", "package digest to attest to")
	clientKey := fs.String("client-key", "", "hex SHA-256 of the client's SPKI")
	limits := fs.String("limits", "{}", "limits, JSON")
	attachTimeout := fs.Duration("attach-timeout", 2*time.Minute, "how long to wait for the client")
	cacheDir := fs.String("cache-dir", "", "compilation cache (insecure keeps only)")
	engineName := fs.String("engine", "", "engine that runs the workload (wazero or wasmtime)")
	maxOutput := fs.Int64("max-output", DefaultMaxOutput, "bytes of log and host output after which the keep ends")
	volumes := fs.String("volumes", "", "host folders to preopen for the workload, JSON (the containerd shim's)")
	secretService := fs.String("secret-service", "", "attestation service URL to fetch the config's [secrets.kbs] from (the containerd shim's)")
	secretServiceCA := fs.String("secret-service-ca", "", "PEM roots of --secret-service's TLS certificate")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if ahead {
		// Where a keep process started for its keep is put by the launcher.
		if err := os.Chdir(*dir); err != nil {
			fmt.Fprintf(stderr, "keep failed: %v\n", err)
			return 1
		}
		os.Setenv("TMPDIR", filepath.Join(*dir, "tmp"))
	}
	rec := &exitRecorder{dir: *dir}
	raw := stderr
	stderr = &keeplog.Limited{W: raw, Max: *maxOutput, OnLimit: func() {
		// Said past the limit (one line): the agent allows for it.
		msg := fmt.Sprintf("output limit of %d bytes reached", *maxOutput)
		fmt.Fprintf(raw, "keep failed: %s\n", msg)
		rec.record(ExitRecord{State: StateFailed, Reason: msg})
		os.Exit(1)
	}}
	logf := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		if len(msg) > maxLogLine {
			msg = msg[:maxLogLine]
		}
		fmt.Fprintln(stderr, msg)
	}
	// Its output is a file (keeplog) nowadays; should it be a pipe whose
	// reader died, the keep must go on.
	signal.Ignore(syscall.SIGPIPE)
	// A crash (out of memory under the keep's limit) prints its message
	// to the agent's log, without goroutine stacks and their values.
	debug.SetTraceback("none")
	if ahead {
		logf("keep process started ahead of its keep")
	}
	kio := KeepIO{
		Logf:       logf,
		State:      func(s string) { logf("%s", stateLine+s) },
		HostOutput: stderr,
		Ended:      rec.record,
		Terminate:  os.Exit,
	}
	p := KeepParams{Spec: keep.Spec{Dir: *dir, Backend: *backend, Digest: *digest, AttachTimeout: *attachTimeout, MaxOutput: *maxOutput},
		CacheDir: *cacheDir, Engine: *engineName}
	var err1, err2 error
	p.Nonce, err1 = hex.DecodeString(*nonce)
	p.ClientKey, err2 = hex.DecodeString(*clientKey)
	err3 := json.Unmarshal([]byte(*limits), &p.Limits)
	var err4 error
	if *volumes != "" {
		if err4 = strictjson.Decode([]byte(*volumes), &p.Volumes); err4 == nil {
			err4 = keep.CheckVolumes(p.Volumes)
		}
	}
	var err5 error
	if *secretService != "" {
		p.SecretService = &delivery.SecretService{URL: *secretService}
		if *secretServiceCA != "" {
			p.SecretService.RootsPEM, err5 = os.ReadFile(*secretServiceCA)
		}
		if err5 == nil {
			err5 = p.SecretService.Check()
		}
	}
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return keepFailed(kio, "arguments: %v", err)
	}
	var ln *net.UnixListener
	sock := filepath.Join(*dir, keepSocket)
	kio.Hello = func(hello []byte) error {
		os.Remove(sock)
		var err error
		if ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"}); err != nil {
			return err
		}
		os.Chmod(sock, 0o600)
		hf := os.NewFile(helloFD, "hello")
		_, err = hf.Write(hello)
		hf.Close()
		if err != nil {
			return fmt.Errorf("writing the hello: %w", err)
		}
		return nil
	}
	kio.Accept = func(timeout time.Duration) (net.Conn, error) {
		ln.SetDeadline(time.Now().Add(timeout))
		conn, err := ln.Accept()
		ln.Close()
		os.Remove(sock)
		return conn, err
	}
	return RunKeep(context.Background(), p, kio)
}

// RunKeep is a keep, process or VM: it applies its limits, makes its key
// and evidence inside, publishes its hello, serves one confidential
// delivery on the relayed connection and runs the workload. It returns the
// status for the keep's exit (the workload's, or 1 when the keep failed).
func RunKeep(ctx context.Context, p KeepParams, kio KeepIO) int {
	fail := func(format string, a ...any) int { return keepFailed(kio, format, a...) }
	apply := p.ApplyLimits
	if apply == nil {
		apply = keep.ApplyLimits
	}
	if err := apply(p.Limits); err != nil {
		return fail("%v", err)
	}
	if p.Limits.WallSeconds > 0 {
		// The agent kills the keep at its wall time; the keep also ends
		// itself, so that it does not outlive its limit when no agent runs.
		time.AfterFunc(time.Duration(p.Limits.WallSeconds)*time.Second, func() {
			kio.Terminate(fail("wall time limit of %ds reached", p.Limits.WallSeconds))
		})
	}
	var programs *runtime.Programs
	preloaded := make(chan struct{})
	if p.CacheDir != "" && p.Backend == tee.NameNil {
		// An insecure keep trusts the host's cache (docs/host.md): it
		// loads the module of the package it will run, if an earlier keep
		// ran it, while it makes its evidence and waits for its client.
		programs = &runtime.Programs{MaxPrograms: 1, CacheDir: p.CacheDir}
		go func() {
			defer close(preloaded)
			t0 := time.Now()
			err := programs.Preload(ctx, p.Engine, p.Digest, false)
			switch {
			case err == nil:
				kio.Logf("compiled the package's module ahead from the cache in %v", time.Since(t0).Round(time.Millisecond))
			case !errors.Is(err, runtime.ErrNotRemembered):
				kio.Logf("could not compile the package's module ahead: %v", err)
			}
		}()
	}
	b := p.Evidence
	if b == nil {
		var err error
		if b, err = tee.Open(p.Backend); err != nil {
			return fail("%v", err)
		}
	}
	keep, err := delivery.NewKeep(ctx, b, p.Nonce, p.Digest, p.ClientKey)
	if err != nil {
		return fail("evidence: %v", err)
	}
	hello, _ := json.Marshal(keep.Hello)
	if err := kio.Hello(hello); err != nil {
		return fail("%v", err)
	}
	kio.Logf("evidence made (%s, key %s); waiting for the client", b.Platform(), delivery.SPKIFingerprint(keep.SPKI()))
	conn, err := kio.Accept(p.AttachTimeout)
	if err != nil {
		return fail("no client attached within %v", p.AttachTimeout)
	}
	opts := delivery.ServeOptions{
		CacheDir: p.CacheDir,
		Engine:   p.Engine,
		Programs: programs,
		Log:      kio.Logf,
		Abort: func(reason string) {
			kio.Terminate(fail("workload stopped: %s", reason))
		},
		Detached:   func() { kio.Logf("the client detached; the workload runs on") },
		Started:    func() { kio.State(StateRunning) },
		HostOutput: kio.HostOutput,
	}
	opts.SecretService = p.SecretService
	for _, v := range p.Volumes {
		opts.Volumes = append(opts.Volumes, config.File{Kind: config.KindDir, Name: v.Guest, Path: v.Host, ReadOnly: v.ReadOnly})
	}
	res, err := keep.Serve(ctx, conn, opts)
	if programs != nil && err == nil {
		// The run took its program from programs, so the loading ahead has
		// ended or is about to: its line belongs in the log before the
		// keep's end (a short workload could otherwise exit first). The
		// bound only guards against a load of another module.
		select {
		case <-preloaded:
		case <-time.After(5 * time.Second):
		}
	}
	if err != nil {
		if errors.Is(err, delivery.ErrRefused) {
			// The client was told why; the reason may quote the package.
			return fail("delivery refused (the client was told why)")
		}
		return fail("delivery: %v", err)
	}
	if res.Reason != "" {
		return fail("workload error (reported to the client)")
	}
	return keepExited(kio, res.ExitCode)
}

// exitRecorder writes a process keep's exit record to its folder, once.
type exitRecorder struct {
	dir  string
	once sync.Once
}

func (k *exitRecorder) record(r ExitRecord) {
	k.once.Do(func() {
		if k.dir == "" {
			return
		}
		keep.WriteExitRecord(k.dir, r)
	})
}

func keepFailed(kio KeepIO, format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	kio.Logf("keep failed: %s", msg)
	kio.Ended(ExitRecord{State: StateFailed, Reason: msg})
	return 1
}

func keepExited(kio KeepIO, code int) int {
	kio.Logf("workload exited with status %d", code)
	kio.Ended(ExitRecord{State: StateExited, ExitCode: &code})
	if code < 0 || code > 255 {
		return 255
	}
	return code
}

// ApplyLimits applies l to this process with setrlimit, as a process keep
// does (RLIMIT_DATA, RLIMIT_CPU, RLIMIT_NOFILE; zero fields are left alone).
func ApplyLimits(l Limits) error { return keep.ApplyLimits(l) }
