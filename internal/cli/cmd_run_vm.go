package cli

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// vmOptions are run's flags for the keep kind.
type vmOptions struct {
	kind, image, firmware string
}

func addKeepKindFlags(fs *flag.FlagSet) *vmOptions {
	o := &vmOptions{}
	fs.StringVar(&o.kind, "keep", keep.KindProcess, "what the keep is: process (castellan runs the workload itself) or vm (a QEMU micro-VM booted from --keep-image, delivered to over its channel)")
	fs.StringVar(&o.image, "keep-image", os.Getenv("CASTELLAN_KEEP_IMAGE"), "with --keep vm: the keep image folder ('castellan keep-image build'; $CASTELLAN_KEEP_IMAGE)")
	fs.StringVar(&o.firmware, "firmware", "", "with --keep vm and backend snp or tdx: the VM's firmware (the file 'castellan keep-image measure --firmware' used)")
	return o
}

// vmStartTimeout bounds a VM keep's boot and evidence: generous, because
// under TCG a boot takes seconds to tens of seconds.
const vmStartTimeout = 5 * time.Minute

// runVM runs a workload in a VM keep on this machine: it boots the keep
// image with QEMU, verifies the keep's evidence (signatures and bindings,
// or the attestation service with --attest), delivers the package and its
// secrets over TLS that ends inside the VM, and returns the workload's
// exit status. The VM is ended at the wall-time limit, at the output limit
// and when castellan is interrupted; nothing of it is left on disk.
func runVM(e *Env, ro *runOptions, art *workload.Artifact, cfg *config.Config, name string, args []string) int {
	if ro.memory != "" || ro.report != "" || ro.noCache {
		return e.Usagef("--keep vm: --memory, --report and --no-cache apply to process keeps (a VM keep takes its limits from the package's config)")
	}
	if w := ro.world; w != nil && (len(w.dirs) > 0 || len(w.env) > 0) {
		// Not dropped in silence: the workload would run without them.
		return e.Usagef("--keep vm: --dir, --dir-ro and --env apply to process keeps (a VM keep has no disk, and its environment is the package's config)")
	}
	var limits config.Limits
	if cfg != nil {
		limits = cfg.Limits
		for _, f := range cfg.Files {
			switch f.Kind {
			case config.KindDir, config.KindListen, config.KindConnect:
				return e.Errorf("--keep vm: the config's %s entry %q needs the host's %s, and a VM keep has neither network nor disk",
					f.Kind, f.Name, map[bool]string{true: "folders", false: "network"}[f.Kind == config.KindDir])
			}
		}
	}
	if ro.wallTime < 0 {
		return e.Usagef("--wall-time: %v is negative", ro.wallTime)
	}
	if ro.wallTime > 0 {
		limits.WallTime = ro.wallTime
	}
	if ro.maxOutput != "" {
		n, err := config.ParseSize(ro.maxOutput)
		if err != nil || n == 0 {
			return e.Usagef("--max-output: %q is not a size above 0", ro.maxOutput)
		}
		limits.MaxOutput = int64(n)
	}
	secrets, code := ro.secrets.read(e)
	if code != ExitOK {
		return code
	}
	if _, err := delivery.CheckSecrets(art, secrets); err != nil {
		return secretsError(e, err)
	}
	backend, code := vmBackend(e, ro.backend, ro.vm)
	if code != ExitOK {
		return code
	}
	launcher, code := keepLauncher(e, keep.KindVM, ro.vm.image, ro.vm.firmware, "")
	if launcher == nil {
		return code
	}
	if err := launcher.Provision(); err != nil {
		return e.Errorf("%v", err)
	}
	var v delivery.Verifier = insecureVerifier()
	if ro.attest != "" {
		sv, code := serviceVerifier(e, ro.attest, ro.attestCA, name, false)
		if sv == nil {
			return code
		}
		v = sv
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "cstl-keep-")
	if err != nil {
		return e.Errorf("keep folder: %v", err)
	}
	defer os.RemoveAll(dir)
	sess, err := delivery.NewSession()
	if err != nil {
		return e.Errorf("%v", err)
	}
	nonce, err := v.Nonce(ctx)
	if err != nil {
		return e.Errorf("nonce: %v", err)
	}
	id := make([]byte, 6)
	rand.Read(id)
	spec := keep.Spec{ID: fmt.Sprintf("%x", id), Dir: dir, Backend: backend, Nonce: nonce, Digest: art.Digest.String(),
		ClientKey: sess.KeyHash, AttachTimeout: time.Minute,
		Limits: keep.Limits{VMMemoryBytes: limits.VMMemory, VCPUs: int64(limits.VCPUs), WallSeconds: int64((limits.WallTime + time.Second - 1) / time.Second)}}
	inst, err := launcher.Start(ctx, spec)
	if err != nil {
		return e.Errorf("%v", err)
	}
	vm := &vmRun{e: e, inst: inst, name: name, dir: dir}
	defer vm.end(launcher, spec)
	if limits.WallTime > 0 {
		t := time.AfterFunc(limits.WallTime, func() { vm.stop(ExitWallTime, "wall time limit of %v reached", limits.WallTime) })
		defer t.Stop()
	}
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case <-ctx.Done():
			vm.stop(ExitError, "interrupted")
		case <-finished:
		}
	}()
	stdout, stderr := io.Writer(e.Stdout), io.Writer(e.Stderr)
	if limits.MaxOutput > 0 {
		lw := &limitWriter{left: limits.MaxOutput, onLimit: func() {
			vm.stop(ExitMaxOutput, "output limit of %d bytes reached", limits.MaxOutput)
		}}
		stdout, stderr = lw.wrap(e.Stdout), lw.wrap(e.Stderr)
	}

	hctx, cancel := context.WithTimeout(ctx, vmStartTimeout)
	hello, err := inst.Hello(hctx)
	cancel()
	if err != nil {
		return vm.failed("the VM keep did not start: %v", err)
	}
	h, _, err := delivery.ParseHello(hello)
	if err != nil {
		return vm.failed("the VM keep's hello: %v", err)
	}
	verified, err := v.Verify(ctx, h, nonce, art.Digest.String())
	if err != nil {
		return vm.failed("%v", err)
	}
	if verified.Claims.Insecure() && ro.attest == "" {
		e.Infof("VM keep evidence checked (%s): signatures and bindings only, no policy (pass --attest URL for one)", verified.Claims.Platform)
	}
	conn, err := net.Dial("unix", filepath.Join(dir, keep.SocketFile))
	if err != nil {
		return vm.failed("the VM keep's endpoint: %v", err)
	}
	res, err := sess.Deliver(ctx, conn, verified, delivery.Delivery{Artifact: art, Name: name, Args: args,
		Secrets: secrets, Stdout: stdout, Stderr: stderr})
	if code, stopped := vm.stopped(); stopped {
		return code
	}
	if err != nil {
		return vm.failed("%v", err)
	}
	if res.Reason != "" {
		return e.Errorf("%s: %s", name, res.Reason)
	}
	return res.ExitCode
}

// vmBackend resolves --backend for a VM keep: auto is snp or tdx where this
// host launches such VMs, else nil.
func vmBackend(e *Env, name string, o *vmOptions) (string, int) {
	if name != "" && name != tee.NameAuto {
		if _, err := tee.New(name); err != nil {
			return "", e.Usagef("--backend: %v", err)
		}
		return name, ExitOK
	}
	s := qemu.Probe(qemu.OS{})
	switch {
	case s.SNP:
		return tee.NameSNP, ExitOK
	case s.TDX:
		return tee.NameTDX, ExitOK
	}
	return tee.NameNil, ExitOK
}

// vmRun is one VM keep of run: its log, and its end.
type vmRun struct {
	e    *Env
	inst keep.Instance
	name string
	dir  string // the keep's folder

	mu        sync.Mutex
	stopCode  int
	isStopped bool
}

// tail prints the last n lines of a file of the keep (not its state
// changes).
func (v *vmRun) tail(what, path string, n int) {
	b, err := readFileLimited(path, 1<<20)
	if err != nil {
		return
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, keep.StateLine) {
			lines = append(lines, l)
		}
	}
	for _, l := range lines[max(0, len(lines)-n):] {
		v.e.Infof("%s: %s", what, l)
	}
}

// stop ends the VM once, for a limit or an interruption.
func (v *vmRun) stop(code int, format string, a ...any) {
	v.mu.Lock()
	if v.isStopped {
		v.mu.Unlock()
		return
	}
	v.isStopped, v.stopCode = true, code
	v.mu.Unlock()
	v.e.Errorf("%s: stopped: %s", v.name, fmt.Sprintf(format, a...))
	keep.KillGroup(v.inst.PID(), v.inst.StartTicks())
}

func (v *vmRun) stopped() (int, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stopCode, v.isStopped
}

// failed reports a keep that failed, with its last log lines.
func (v *vmRun) failed(format string, a ...any) int {
	if code, ok := v.stopped(); ok {
		return code
	}
	keep.KillGroup(v.inst.PID(), v.inst.StartTicks())
	v.inst.Wait()
	// The keep's last log lines, and the serial console's, which say how
	// a guest that never spoke on its channel ended (a kernel panic, a
	// missing module).
	v.tail("keep", keeplog.Path(v.dir), 20)
	v.tail("keep console", filepath.Join(v.dir, qemu.ConsoleLog), 10)
	return v.e.Errorf(format, a...)
}

// end waits for the VM to power off (or kills it) and removes what it
// left.
func (v *vmRun) end(l keep.Launcher, s keep.Spec) {
	done := make(chan struct{})
	go func() {
		v.inst.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		keep.KillGroup(v.inst.PID(), v.inst.StartTicks())
		<-done
	}
	l.Cleanup(s.ID, s.Dir)
}
