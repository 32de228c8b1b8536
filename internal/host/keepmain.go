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

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
)

// Files in a keep's folder (state dir/keeps/ID).
const (
	keepSocket = "keep.sock" // the keep's relay endpoint, one connection
	exitFile   = "exit.json" // the keep's own account of how it ended
	helloFD    = 3           // the pipe the keep writes its hello to
	stateLine  = "@state "   // a stderr line that reports a state change
	maxLogLine = 4096        // longer keep log lines are cut
	keepDirMax = 100         // bytes, so that the socket path fits sun_path
)

// exitRecord is what the keep writes to exit.json before it exits.
type exitRecord struct {
	State    string `json:"state"` // exited or failed
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// KeepMain is the keep process that the agent starts (`castellan keep`,
// re-executing its own binary). It applies its limits to itself, makes
// its key and evidence, writes its hello to descriptor 3, waits on its
// socket for one relayed connection and serves one delivery. Its stderr is
// the agent's log of the keep (its output file, keeplog): it never carries
// workload data (unless a detached workload asked for host output), and
// the keep ends when it passes --max-output bytes.
func KeepMain(args []string, stderr io.Writer) int {
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
	maxOutput := fs.Int64("max-output", DefaultMaxOutput, "bytes of log and host output after which the keep ends")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	k := &keepProc{dir: *dir}
	raw := stderr
	stderr = &keeplog.Limited{W: raw, Max: *maxOutput, OnLimit: func() {
		// Said past the limit (one line): the agent allows for it.
		msg := fmt.Sprintf("output limit of %d bytes reached", *maxOutput)
		fmt.Fprintf(raw, "keep failed: %s\n", msg)
		k.record(exitRecord{State: StateFailed, Reason: msg})
		os.Exit(1)
	}}
	logf := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		if len(msg) > maxLogLine {
			msg = msg[:maxLogLine]
		}
		fmt.Fprintln(stderr, msg)
	}
	k.logf = logf
	// Its output is a file (keeplog) nowadays; should it be a pipe whose
	// reader died, the keep must go on.
	signal.Ignore(syscall.SIGPIPE)
	// A crash (out of memory under the keep's limit) prints its message
	// to the agent's log, without goroutine stacks and their values.
	debug.SetTraceback("none")
	var lim Limits
	if err := json.Unmarshal([]byte(*limits), &lim); err != nil {
		return k.fail("limits: %v", err)
	}
	if err := applyLimits(lim); err != nil {
		return k.fail("%v", err)
	}
	if lim.WallSeconds > 0 {
		// The agent kills the keep at its wall time; the keep also ends
		// itself, so that it does not outlive its limit when no agent runs.
		time.AfterFunc(time.Duration(lim.WallSeconds)*time.Second, func() {
			os.Exit(k.fail("wall time limit of %ds reached", lim.WallSeconds))
		})
	}
	n, err1 := hex.DecodeString(*nonce)
	ck, err2 := hex.DecodeString(*clientKey)
	if err := errors.Join(err1, err2); err != nil {
		return k.fail("arguments: %v", err)
	}
	b, err := tee.Open(*backend)
	if err != nil {
		return k.fail("%v", err)
	}
	ctx := context.Background()
	keep, err := delivery.NewKeep(ctx, b, n, *digest, ck)
	if err != nil {
		return k.fail("evidence: %v", err)
	}
	sock := filepath.Join(*dir, keepSocket)
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return k.fail("%v", err)
	}
	os.Chmod(sock, 0o600)
	hello, _ := json.Marshal(keep.Hello)
	hf := os.NewFile(helloFD, "hello")
	_, err = hf.Write(hello)
	hf.Close()
	if err != nil {
		return k.fail("writing the hello: %v", err)
	}
	logf("evidence made (%s, key %s); waiting for the client", b.Platform(), delivery.SPKIFingerprint(keep.SPKI()))
	ln.SetDeadline(time.Now().Add(*attachTimeout))
	conn, err := ln.Accept()
	ln.Close()
	os.Remove(sock)
	if err != nil {
		return k.fail("no client attached within %v", *attachTimeout)
	}
	opts := delivery.ServeOptions{
		CacheDir: *cacheDir,
		Log:      logf,
		Abort: func(reason string) {
			os.Exit(k.fail("workload stopped: %s", reason))
		},
		Detached: func() { logf("the client detached; the workload runs on") },
		Started:  func() { logf(stateLine + StateRunning) },
	}
	opts.HostOutput = stderr
	res, err := keep.Serve(ctx, conn, opts)
	if err != nil {
		if errors.Is(err, delivery.ErrRefused) {
			// The client was told why; the reason may quote the package.
			return k.fail("delivery refused (the client was told why)")
		}
		return k.fail("delivery: %v", err)
	}
	if res.Reason != "" {
		return k.fail("workload error (reported to the client)")
	}
	return k.exited(res.ExitCode)
}

// keepProc writes the keep's exit record.
type keepProc struct {
	dir  string
	logf func(string, ...any)
	once sync.Once
}

func (k *keepProc) record(r exitRecord) {
	k.once.Do(func() {
		if k.dir == "" {
			return
		}
		b, _ := json.Marshal(r)
		tmp := filepath.Join(k.dir, exitFile+".tmp")
		if os.WriteFile(tmp, b, 0o600) == nil {
			os.Rename(tmp, filepath.Join(k.dir, exitFile))
		}
	})
}

func (k *keepProc) fail(format string, a ...any) int {
	msg := fmt.Sprintf(format, a...)
	k.logf("keep failed: %s", msg)
	k.record(exitRecord{State: StateFailed, Reason: msg})
	return 1
}

func (k *keepProc) exited(code int) int {
	k.logf("workload exited with status %d", code)
	k.record(exitRecord{State: StateExited, ExitCode: &code})
	if code < 0 || code > 255 {
		return 255
	}
	return code
}
