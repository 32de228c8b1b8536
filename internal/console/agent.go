package console

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// AgentRunner runs each keep through a host agent's API with confidential
// delivery, the console acting as the deploying client: it asks the agent
// for a keep bound to a fresh nonce and the package digest, verifies the
// keep's evidence itself, then sends the package over TLS pinned to the
// attested key (through the agent's relay) and reads the workload's
// stdout and stderr back on that channel. Stop is the agent's stop.
type AgentRunner struct {
	Client *host.Client
	// Where names the agent on the page: "the host agent in this process"
	// or "the host agent at https://...".
	Where string
	// Max is the agent's maximum limits (from GET /v1/host); a keep's
	// limits are lowered to them. Zero fields: no cap known.
	Max host.Limits
	// Remote is set when the agent may run on another machine.
	Remote bool
}

var _ Runner = (*AgentRunner)(nil)

// agentMemorySlack is what a keep process needs beside the workload's
// linear memory: the Go runtime, the engine and the compiled module.
const agentMemorySlack = 512 << 20

// keepOpenFiles is the descriptor limit of a console keep.
const keepOpenFiles = 256

// KeepLimits are the agent limits of a console keep: its wall time (whole
// seconds, rounded up), memory (the linear memory cap plus what the keep
// process itself needs; the agent enforces it as RLIMIT_DATA on the whole
// process), CPU time (the wall time on every CPU: never the binding limit)
// and descriptors.
func KeepLimits(wall time.Duration, maxMemory int64) host.Limits {
	secs := int64((wall + time.Second - 1) / time.Second)
	return host.Limits{
		MemoryBytes: maxMemory + agentMemorySlack,
		CPUSeconds:  secs * int64(goruntime.NumCPU()),
		WallSeconds: secs,
		OpenFiles:   keepOpenFiles,
	}
}

func capLimit(v *int64, max int64) {
	if max > 0 && *v > max {
		*v = max
	}
}

// Start reads the job's module and config, and deploys them in the
// background.
func (r *AgentRunner) Start(job Job) (Keep, error) {
	wasm, err := os.ReadFile(job.Wasm)
	if err != nil {
		return nil, err
	}
	var cfg []byte
	if job.Config != "" {
		if cfg, err = os.ReadFile(job.Config); err != nil {
			return nil, err
		}
	}
	art, err := workload.New(wasm, cfg)
	if err != nil {
		return nil, err
	}
	var roots []*x509.Certificate
	if job.SimRoots != nil {
		if roots, err = job.SimRoots(); err != nil {
			return nil, fmt.Errorf("loading the local simulation roots: %w", err)
		}
	}
	lim := KeepLimits(job.WallTime, job.MaxMemory)
	capLimit(&lim.MemoryBytes, r.Max.MemoryBytes)
	capLimit(&lim.CPUSeconds, r.Max.CPUSeconds)
	capLimit(&lim.WallSeconds, r.Max.WallSeconds)
	capLimit(&lim.OpenFiles, r.Max.OpenFiles)
	ctx, cancel := context.WithCancel(context.Background())
	k := &agentKeep{client: r.Client, cancel: cancel, proofSet: make(chan struct{}), done: make(chan struct{})}
	where := r.Where
	if where == "" {
		where = "a host agent"
	}
	opts := host.DeployOptions{
		Backend:  job.Backend,
		Limits:   lim,
		Name:     "console",
		Verifier: &delivery.InsecureVerifier{SimRoots: roots},
		Delivery: delivery.Delivery{Artifact: art, Name: "app", Stdout: job.Stdout, Stderr: job.Stderr},
		OnKeep: func(kp *host.Keep) {
			k.mu.Lock()
			k.id = kp.ID
			stop := k.stopped
			k.mu.Unlock()
			if stop {
				go k.agentStop()
			}
		},
		OnVerified: func(v *delivery.Verified) {
			p := deliveredProof(v, job.Backend, where, roots != nil)
			if r.Remote && p.Simulated {
				p.PlatformName = platformName(p.Platform, false) + ", simulated on the host agent's machine"
			}
			k.setProof(p, nil)
		},
	}
	go k.deploy(ctx, opts)
	return k, nil
}

// agentKeep is a keep deployed through the agent.
type agentKeep struct {
	client *host.Client
	cancel context.CancelFunc

	proofSet chan struct{}
	proof    *Proof
	proofErr error

	done chan struct{}
	end  Ending

	mu       sync.Mutex
	id       string
	stopped  bool
	once     sync.Once
	stopOnce sync.Once
}

func (k *agentKeep) setProof(p *Proof, err error) {
	k.once.Do(func() {
		k.proof, k.proofErr = p, err
		close(k.proofSet)
	})
}

func (k *agentKeep) deploy(ctx context.Context, opts host.DeployOptions) {
	defer close(k.done)
	defer k.cancel()
	kp, res, err := k.client.Deploy(ctx, opts)
	var rec *host.Keep
	if kp != nil {
		// Until the agent has recorded the end, the keep holds one of its
		// slots: the console frees its own only after.
		rec = k.waitEnd(kp.ID)
	}
	k.end = ending(res, err, rec)
	// A keep whose evidence never checked out has no proof: say why.
	var ve *delivery.VerificationError
	if errors.As(err, &ve) {
		k.setProof(nil, ve)
	} else if err != nil {
		k.setProof(nil, fmt.Errorf("the keep ended before its evidence was checked: %v", err))
	} else {
		k.setProof(nil, errors.New("the keep ended before its evidence was checked"))
	}
}

// keepEndWait bounds how long the console waits for the agent to record
// the end of a keep.
const keepEndWait = 15 * time.Second

// waitEnd follows the keep's events until it ended and returns the
// agent's record of it, or nil.
func (k *agentKeep) waitEnd(id string) *host.Keep {
	ctx, cancel := context.WithTimeout(context.Background(), keepEndWait)
	defer cancel()
	k.client.Events(ctx, id, true, func(host.Event) {})
	rec, err := k.client.Get(ctx, id)
	if err != nil || !host.Terminal(rec.State) {
		return nil
	}
	return rec
}

// ending works out how a deployment ended: from the workload's result when
// the channel delivered one, else from the agent's record of the keep.
func ending(res *delivery.Result, err error, rec *host.Keep) Ending {
	if err == nil {
		if res.Reason != "" {
			return Ending{Code: res.ExitCode, Error: "the workload failed: " + res.Reason}
		}
		return Ending{Code: res.ExitCode}
	}
	e := Ending{Code: -1, Error: err.Error()}
	var ve *delivery.VerificationError
	var re *delivery.RefusedError
	if rec == nil || errors.As(err, &ve) || errors.As(err, &re) {
		return e
	}
	// The channel broke: the keep was stopped, hit a limit or crashed.
	switch {
	case rec.State == host.StateExited && rec.ExitCode != nil:
		return Ending{Code: *rec.ExitCode}
	case rec.State == host.StateStopped:
		return Ending{Code: -1}
	case strings.Contains(rec.Reason, "wall time limit"):
		return Ending{Code: -1, Limit: "time"}
	case rec.Reason != "":
		return Ending{Code: -1, Error: "the keep " + rec.State + ": " + rec.Reason}
	}
	return e
}

func (k *agentKeep) Proof(ctx context.Context) (*Proof, error) {
	select {
	case <-k.proofSet:
		return k.proof, k.proofErr
	default:
	}
	select {
	case <-k.proofSet:
		return k.proof, k.proofErr
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Stop stops the keep through the agent's API; before the agent named the
// keep, it abandons the create request, which makes the agent stop it.
func (k *agentKeep) Stop() {
	k.mu.Lock()
	k.stopped = true
	id := k.id
	k.mu.Unlock()
	if id == "" {
		k.cancel()
		return
	}
	go k.agentStop()
}

func (k *agentKeep) agentStop() {
	k.stopOnce.Do(func() {
		k.mu.Lock()
		id := k.id
		k.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), keepEndWait)
		defer cancel()
		k.client.Stop(ctx, id)
		// Should the agent not answer, the channel is closed anyway: the
		// keep ends when its client hangs up.
		k.cancel()
	})
}

func (k *agentKeep) Wait() Ending {
	<-k.done
	return k.end
}

// deliveredProof puts the claims the console verified before it delivered
// into words for the page.
func deliveredProof(v *delivery.Verified, backend, where string, simRoots bool) *Proof {
	c := v.Claims
	fp := delivery.SPKIFingerprint(v.SPKI)
	p := &Proof{
		WorkloadDigest: c.WorkloadDigest,
		Backend:        backend,
		Platform:       c.Platform,
		Simulated:      c.Simulated,
		Insecure:       c.Insecure(),
		Debug:          c.Debug,
		TCB:            tcbList(c.TCB),
		KeyFingerprint: fp,
		Nonce:          hex.EncodeToString(c.Nonce),
	}
	if len(c.Measurement) > 0 {
		p.Measurement = hex.EncodeToString(c.Measurement)
	}
	roots := "the CPU vendor's root"
	if simRoots {
		roots = "this machine's simulation root (trusted here only because the console is a local demo)"
	}
	if c.Platform == evidence.PlatformNone {
		p.Evidence.Summary = "No hardware evidence: the nil backend has no TEE that could sign a report. The keep's statement of its key, the console's nonce and the package digest is signed by nobody: anyone in control of this machine could have written it."
		p.VerifiedBy = "This console, as the deploying client, before it sent the workload: that the keep's (unsigned) statement answers the console's fresh nonce and names the package digest, and that the TLS channel ends at the key it names. Without a TEE there is nothing more to check."
	} else {
		p.Evidence.Present, p.Evidence.Verified = true, true
		p.Evidence.Summary = "Checked by this console before it sent the workload: the report's signature chains to " + roots + ", and the report binds the keep's key, the console's fresh nonce and the digest of the package the console then sent."
		p.VerifiedBy = "This console, as the deploying client, with no policy (development verification): signature chain to " + roots + ", nonce, package digest and key bindings. The measurement, TCB and debug flag are shown, not compared with reference values."
	}
	p.Delivery = "The console sent the workload through " + where + " over TLS 1.3 to the keep, pinned to the attested key " + fp + ": the agent relayed only encrypted bytes, and the output came back on the same channel."
	p.Certificate = CertInfo{Summary: "No keep certificate: no attestation service issued one. The console pinned the keep's attested key in TLS instead (" + fp + ")."}
	p.PlatformName = platformName(p.Platform, p.Simulated)
	p.Verdict, p.Explanation = verdict(p)
	return p
}

// LocalAgentOptions configure StartLocalAgent.
type LocalAgentOptions struct {
	// StateDir is the agent's state folder; "" = a new temporary folder,
	// removed by Close.
	StateDir string
	// MaxKeeps and Max are the agent's maxima.
	MaxKeeps int
	Max      host.Limits
	// KeepCommand is the keep process; nil = this executable "keep".
	KeepCommand []string
	// KeepCacheDir is the compilation cache of nil-backend keeps.
	KeepCacheDir string
	// WarmKeeps is how many keep processes wait started ahead
	// (host.Config.WarmKeeps).
	WarmKeeps int
	Logf      func(format string, a ...any)
}

// LocalAgent is a host agent inside this process, for the console: its own
// state folder, a token it made for itself, TLS on a loopback port.
type LocalAgent struct {
	Agent  *host.Agent
	URL    string
	Client *host.Client

	dir     string
	temp    bool
	cancel  context.CancelFunc
	served  chan struct{}
	closeMu sync.Once
}

// StartLocalAgent starts a host agent in this process, serving on a
// loopback port.
func StartLocalAgent(o LocalAgentOptions) (la *LocalAgent, err error) {
	la = &LocalAgent{dir: o.StateDir}
	if la.dir == "" {
		// Short: the keeps' Unix sockets live under it.
		if la.dir, err = os.MkdirTemp("", "cstl-console-"); err != nil {
			return nil, fmt.Errorf("host agent state folder: %w", err)
		}
		la.temp = true
	}
	fail := func(err error) (*LocalAgent, error) {
		if la.temp {
			os.RemoveAll(la.dir)
		}
		return nil, err
	}
	tok, err := host.CreateToken(la.dir, "console")
	if err != nil {
		return fail(fmt.Errorf("host agent token: %w", err))
	}
	a, err := host.New(host.Config{StateDir: la.dir, MaxKeeps: o.MaxKeeps, Max: o.Max, KeepCommand: o.KeepCommand,
		KeepCacheDir: o.KeepCacheDir, WarmKeeps: o.WarmKeeps, Logf: o.Logf})
	if err != nil {
		return fail(err)
	}
	cert, err := a.TLSCertificate()
	if err != nil {
		a.Close()
		return fail(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		a.Close()
		return fail(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		ln.Close()
		a.Close()
		return fail(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	la.Agent, la.URL = a, "https://"+ln.Addr().String()
	if la.Client, err = host.NewClient(la.URL, tok, roots); err != nil {
		ln.Close()
		a.Close()
		return fail(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	la.cancel, la.served = cancel, make(chan struct{})
	go func() {
		defer close(la.served)
		if err := a.Serve(ctx, ln); err != nil && o.Logf != nil {
			o.Logf("host agent: %v", err)
		}
	}()
	return la, nil
}

// Runner returns a runner on this agent.
func (la *LocalAgent) Runner() *AgentRunner {
	return &AgentRunner{Client: la.Client, Where: "the host agent in this process (" + la.URL + ")"}
}

// Close stops the agent's keeps and the agent, and removes a temporary
// state folder.
func (la *LocalAgent) Close() {
	la.closeMu.Do(func() {
		la.Agent.StopKeeps()
		la.cancel()
		<-la.served
		la.Client.CloseIdleConnections()
		la.Agent.Close()
		if la.temp {
			os.RemoveAll(la.dir)
		}
	})
}

// StateDir is the agent's state folder.
func (la *LocalAgent) StateDir() string { return filepath.Clean(la.dir) }

// RemoteAgent returns a runner on the host agent that c talks to (url
// names it on the page), with the agent's maxima, and the agent's
// backends for the page.
func RemoteAgent(ctx context.Context, c *host.Client, url string) (*AgentRunner, []tee.Status, error) {
	info, err := c.Host(ctx)
	if err != nil {
		return nil, nil, err
	}
	return &AgentRunner{Client: c, Where: "the host agent at " + url, Max: info.Max, Remote: true}, agentBackends(info), nil
}

// agentBackends lists an agent's backends in tee.Names order, then any
// others.
func agentBackends(info *host.HostInfo) []tee.Status {
	var out []tee.Status
	seen := map[string]bool{}
	add := func(name, state string) {
		seen[name] = true
		st := tee.Status{Name: name, Usable: state == "available"}
		if !st.Usable {
			st.Reason = "on the host agent: " + state
		}
		out = append(out, st)
	}
	for _, n := range tee.Names() {
		if s, ok := info.Backends[n]; ok {
			add(n, s)
		}
	}
	var rest []string
	for n := range info.Backends {
		if !seen[n] {
			rest = append(rest, n)
		}
	}
	sort.Strings(rest)
	for _, n := range rest {
		add(n, info.Backends[n])
	}
	return out
}
