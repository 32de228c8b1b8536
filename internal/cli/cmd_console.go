package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/connlimit"
	"github.com/castellan-dev/castellan/internal/pemcerts"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/console"
	"github.com/castellan-dev/castellan/internal/tee"
)

type consoleOptions struct {
	host      *hostClientFlags
	direct    bool
	stateDir  string
	simRoots  string
	listen    string
	maxKeeps  int
	timeLimit time.Duration
	maxOutput string
	maxUpload string
	maxMemory string
	allowed   multiFlag
}

func addConsoleFlags(fs *flag.FlagSet) *consoleOptions {
	o := &consoleOptions{}
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to serve the page on")
	fs.Var(&o.allowed, "allowed-host", "a name (NAME or NAME:PORT) visitors reach the console by, besides its listen address; repeatable")
	fs.IntVar(&o.maxKeeps, "max-keeps", console.DefaultMaxKeeps, "keeps running at once, all visitors together")
	fs.DurationVar(&o.timeLimit, "time-limit", console.DefaultTimeLimit, "wall time of each keep")
	fs.StringVar(&o.maxOutput, "max-output", "1MiB", "stdout and stderr of each keep together")
	fs.StringVar(&o.maxUpload, "max-upload", "16MiB", "size of an uploaded module")
	fs.StringVar(&o.maxMemory, "max-memory", "256MiB", "linear memory of each keep")
	o.host = addHostClientFlags(fs, true)
	fs.BoolVar(&o.direct, "direct", false, "run each keep as a child 'castellan run' process, without a host agent or confidential delivery")
	fs.StringVar(&o.simRoots, "sim-roots", "", "PEM file of the simulation roots to trust for simulated evidence (default: this machine's; a remote agent's keeps sign with its machine's)")
	fs.StringVar(&o.stateDir, "agent-state-dir", "", "state folder of the console's own host agent (default: a temporary folder, removed at exit)")
	return o
}

var consoleCmd = &Command{
	Name:    "console",
	Usage:   "console [flags]",
	Summary: "serve a web page to try keeps in a browser",
	Help: `Serves a web page on which anyone who reaches it can run a built-in
example or an uploaded .wasm module in a keep for a limited time, watch its
stdout and stderr live, and see the keep's certificate and evidence decoded.
One running keep per browser session; --max-keeps in all.

Keeps run through a host agent, with confidential delivery: by default an
agent inside the console's process (its own state folder, a token it makes
for itself, TLS on a loopback port; its maxima follow the console's
flags); with --host URL (and --host-ca, --token-file) a remote agent. The
console is the deploying client: it verifies each keep's evidence, then
sends the workload over TLS pinned to the attested key and streams the
output back from that channel. With a remote agent the examples that
serve on a port are unavailable (the port is on the agent's machine), and
simulated evidence is checked against --sim-roots (the agent machine's
simulation roots: 'castellan platform info' there names the file).
--direct runs each keep as a child 'castellan run' process instead. The examples are compiled from their embedded
sources on first use (Go examples need go, the C one clang with wasi-libc)
and cached in the user's cache folder.

The console is a local demo: it checks simulated evidence against this
machine's simulation root. Serve it on loopback unless you mean visitors to
run code on this machine. Requests whose Host header is not the listen
address (or, on loopback, localhost) nor an --allowed-host name are refused
(misdirected request), so a page on another site cannot reach the console
by DNS rebinding; behind a proxy or under a DNS name, name it with
--allowed-host.`,
}

func init() {
	DefineFlags("console", func(fs *flag.FlagSet) { addConsoleFlags(fs) })
	consoleCmd.Run = consoleMain
	Register(consoleCmd)
}

func consoleMain(e *Env, args []string) int {
	fs := e.FlagSet(consoleCmd)
	o := addConsoleFlags(fs)
	pos, status, ok := e.Parse(consoleCmd, fs, args)
	if !ok {
		return status
	}
	if len(pos) != 0 {
		return e.Usagef("console: unexpected argument %q (see 'castellan help console')", pos[0])
	}
	sizes := map[string]*int64{}
	var maxOutput, maxUpload, maxMemory int64
	sizes["--max-output"], sizes["--max-upload"], sizes["--max-memory"] = &maxOutput, &maxUpload, &maxMemory
	for name, s := range map[string]string{"--max-output": o.maxOutput, "--max-upload": o.maxUpload, "--max-memory": o.maxMemory} {
		n, err := config.ParseSize(s)
		if err != nil {
			return e.Usagef("%s: %v", name, err)
		}
		if n == 0 || n > 1<<40 {
			return e.Usagef("%s: %s is not between 1 byte and 1TiB", name, s)
		}
		*sizes[name] = int64(n)
	}
	for _, h := range o.allowed {
		if err := console.CheckAllowedHost(h); err != nil {
			return e.Usagef("--allowed-host: %v", err)
		}
	}
	if o.maxKeeps < 1 {
		return e.Usagef("--max-keeps: %d is less than 1", o.maxKeeps)
	}
	if o.timeLimit <= 0 {
		return e.Usagef("--time-limit: %v is not positive", o.timeLimit)
	}
	copts := console.Options{
		TimeLimit:     o.timeLimit,
		MaxOutput:     maxOutput,
		MaxUpload:     maxUpload,
		MaxKeeps:      o.maxKeeps,
		MaxMemory:     maxMemory,
		CacheDir:      defaultCacheDir(),
		AgentStateDir: o.stateDir,
		AllowedHosts:  o.allowed,
		Log:           func(f string, a ...any) { e.Infof(f, a...) },
	}
	if o.simRoots != "" {
		b, err := readFileLimited(o.simRoots, 1<<20)
		if err != nil {
			return e.Errorf("--sim-roots: %v", err)
		}
		roots, err := pemcerts.Parse(b)
		if err != nil {
			return e.Errorf("--sim-roots: %s: %v", o.simRoots, err)
		}
		copts.SimRoots = func() ([]*x509.Certificate, error) { return roots, nil }
	}
	switch {
	case *o.host.url != "" && o.direct:
		return e.Usagef("console: --host and --direct exclude each other")
	case *o.host.url != "" && o.stateDir != "":
		return e.Usagef("console: --agent-state-dir is for the console's own agent, not with --host")
	case *o.host.url != "":
		c, status := o.host.client(e)
		if c == nil {
			return status
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		runner, backends, err := console.RemoteAgent(ctx, c, *o.host.url)
		cancel()
		if err != nil {
			return e.Errorf("console: %v", err)
		}
		copts.Runner = runner
		copts.Backends = func() []tee.Status { return backends }
		copts.KeepsElsewhere = "the host agent at " + *o.host.url
		e.Infof("keeps run on the host agent at %s", *o.host.url)
	case o.direct:
		if o.stateDir != "" {
			return e.Usagef("console: --agent-state-dir is for the console's own agent, not with --direct")
		}
		copts.Runner = &console.ProcessRunner{}
		e.Infof("keeps run as child 'castellan run' processes (--direct: no host agent, no confidential delivery)")
	}
	srv, err := console.New(copts)
	if err != nil {
		return e.Errorf("console: %v", err)
	}
	l, err := net.Listen("tcp", o.listen)
	if err != nil {
		srv.Close()
		return e.Errorf("console: %v", err)
	}
	if host, _, _ := net.SplitHostPort(o.listen); !isLoopback(host) {
		e.Warningf("serving on %s: anyone who reaches it can run code on this machine within the console's limits", o.listen)
	}
	e.Infof("console on http://%s/ (stop with Ctrl-C)", l.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go srv.WarmUp(ctx)
	hs := srv.HTTPServer()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(connlimit.Listen(l, connlimit.DefaultPerClient, e.Warningf)) }()
	select {
	case err := <-errc:
		srv.Close()
		return e.Errorf("console: %v", err)
	case <-ctx.Done():
	}
	e.Infof("stopping the console")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Close()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return e.Errorf("console: %v", err)
	}
	return ExitOK
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
