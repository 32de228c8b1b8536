package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// VM starts each keep as a micro-VM booted from one keep image. The keep's
// evidence backend decides the VM's kind: snp boots an SEV-SNP VM and tdx
// a TD (the guest asks its own firmware for evidence), nil and the
// simulations a plain VM.
type VM struct {
	// Image is the keep image folder (kernel, initrd, cmdline).
	Image string
	// Firmware is the firmware file of confidential VMs: the one the
	// image's reference values were computed with.
	Firmware string
	// Host is what the probes read; nil = this machine.
	Host Host
	// Warnf receives the one-line warning of a keep run under TCG.
	Warnf func(format string, a ...any)
	// ChannelTap, if set, sees every byte of every keep's channel, both
	// ways (tests use it to check that the host only moves ciphertext).
	ChannelTap func(toGuest bool, p []byte)
	// Virtiofsd is the virtio-fs daemon that serves keeps' volumes; ""
	// looks for one (DefaultVirtiofsdPaths, then PATH) when the first keep
	// with volumes starts.
	Virtiofsd string

	support *Support
	simInit []byte // SHA-384 of the image's /init, what a sim-snp guest claims
	kernel  string
	initrd  string
	cmdline string
	warned  sync.Once

	fsdOnce sync.Once
	fsd     *Virtiofsd
	fsdErr  error
}

var _ keep.Launcher = (*VM)(nil)

// Kind implements keep.Launcher.
func (v *VM) Kind() string { return keep.KindVM }

// Provision implements keep.Launcher: it probes the host and checks the
// image. It fails when no VM keep at all can start here (no QEMU, no
// image); a confidential kind that is missing fails at Start, naming what
// is missing.
func (v *VM) Provision() error {
	if v.Host == nil {
		v.Host = OS{}
	}
	if v.Image == "" {
		return errors.New("vm keeps: no keep image (build one with 'castellan keep-image build -o DIR')")
	}
	var err error
	if v.kernel, v.initrd, v.cmdline, err = readImage(v.Image); err != nil {
		return fmt.Errorf("vm keeps: %w", err)
	}
	if v.Firmware != "" {
		if _, err := os.Stat(v.Firmware); err != nil {
			return fmt.Errorf("vm keeps: firmware: %w", err)
		}
	}
	v.simInit = initMeasurement(v.initrd)
	v.support = Probe(v.Host)
	if _, _, err := v.support.Plan(""); err != nil {
		return fmt.Errorf("vm keeps: %w", err)
	}
	return nil
}

// Support returns what the probes found (after Provision).
func (v *VM) Support() *Support { return v.support }

// Enforcement implements keep.Launcher.
func (v *VM) Enforcement() []string {
	accel := "KVM"
	if v.support != nil && !v.support.KVM {
		accel = "TCG (emulation, not isolated by hardware)"
	}
	return []string{
		"VM keep: each keep is a QEMU micro-VM under " + accel + ", sized by vm_memory_bytes and vcpus, with no network and no disk (a pod's volumes through virtio-fs only)",
		"inside the VM the keep sets its own rlimits (memory_bytes, cpu_seconds, open_files) before it reads any input",
		"wall time: the agent kills QEMU's process group at created + wall_seconds",
	}
}

// Available implements keep.Launcher: snp and tdx need a host that
// launches such VMs and the firmware; the others what they need on any
// machine (the simulations, their CA).
func (v *VM) Available(backend string) error {
	b, err := tee.New(backend)
	if err != nil {
		return err
	}
	if conf := confidential(backend); conf != "" {
		_, err := v.Machine(keep.Spec{Backend: backend, Dir: "/"})
		return err
	}
	return b.Available()
}

// confidential returns the VM kind a backend needs.
func confidential(backend string) string {
	switch backend {
	case tee.NameSNP:
		return SNP
	case tee.NameTDX:
		return TDX
	}
	return ""
}

// Machine returns the VM that s runs in, for Start and for tests.
func (v *VM) Machine(s keep.Spec) (*Machine, error) {
	conf := confidential(s.Backend)
	accel, warning, err := v.support.Plan(conf)
	if err != nil {
		return nil, err
	}
	if warning != "" && v.Warnf != nil {
		v.warned.Do(func() { v.Warnf("%s", warning) })
	}
	if conf != "" && v.Firmware == "" {
		return nil, fmt.Errorf("cannot launch %s VM keeps: no firmware file given (the one 'castellan keep-image measure --firmware' used)", strings.ToUpper(conf))
	}
	m := &Machine{Accel: accel, Confidential: conf, Kernel: v.kernel, Initrd: v.initrd, Cmdline: v.cmdline,
		MemoryBytes: s.Limits.VMMemoryBytes, VCPUs: int(s.Limits.VCPUs), Dir: s.Dir}
	if conf != "" {
		m.Firmware = v.Firmware
	}
	if conf == SNP {
		m.CBitPos, m.ReducedPhysBits = v.support.CBitPos, v.support.ReducedPhysBits
	}
	if m.MemoryBytes == 0 {
		m.MemoryBytes = keep.DefaultVMMemory
	}
	if m.VCPUs == 0 {
		m.VCPUs = keep.DefaultVCPUs
	}
	return m, nil
}

// initMeasurement is the SHA-384 of the image's /init: the measurement a
// simulated SEV-SNP guest claims (as a process keep claims its own
// executable's). Computed here once, it spares every sim-snp guest hashing
// 25 MB, seconds under emulation; nil if the initrd cannot be read (the
// guest then hashes itself).
func initMeasurement(initrd string) []byte {
	sum, err := keepimage.InitSHA384(initrd)
	if err != nil {
		return nil
	}
	return sum
}

// launchRequest is what the guest is told over its channel.
func (v *VM) launchRequest(s keep.Spec) (*vmproto.LaunchRequest, error) {
	r := &vmproto.LaunchRequest{Backend: s.Backend, Nonce: s.Nonce, Digest: s.Digest, ClientKey: s.ClientKey,
		Limits: vmproto.Limits{MemoryBytes: s.Limits.MemoryBytes, CPUSeconds: s.Limits.CPUSeconds,
			WallSeconds: s.Limits.WallSeconds, OpenFiles: s.Limits.OpenFiles},
		AttachTimeoutMillis: s.AttachTimeout.Milliseconds()}
	// The memory limit inside is at most the VM's RAM.
	if r.Limits.MemoryBytes > s.Limits.VMMemoryBytes && s.Limits.VMMemoryBytes > 0 {
		r.Limits.MemoryBytes = 0
	}
	if s.Backend == tee.NameSimSNP || s.Backend == tee.NameSimTDX {
		ca, err := sim.Default()
		if err != nil {
			return nil, err
		}
		r.SimCA = ca.MarshalPEM()
	}
	if s.Backend == tee.NameSimSNP {
		r.SimMeasurement = v.simInit
	}
	if err := addSecretService(r, s); err != nil {
		return nil, err
	}
	r.Volumes = volumesOf(s)
	return r, r.Check()
}

// addSecretService names the keep's secret service in its launch request:
// the URL and the roots PEM (read here: the guest cannot read the host's
// files). The host's relay then connects the guest to that URL's
// host:port only.
func addSecretService(r *vmproto.LaunchRequest, s keep.Spec) error {
	if s.SecretServiceURL == "" {
		return nil
	}
	r.SecretServiceURL = s.SecretServiceURL
	if s.SecretServiceCA != "" {
		pem, err := os.ReadFile(s.SecretServiceCA)
		if err != nil {
			return fmt.Errorf("secret service roots: %w", err)
		}
		r.SecretServiceRoots = pem
	}
	return nil
}

// Start implements keep.Launcher: it starts QEMU in a process group of its
// own and connects to the VM's channel. Hello then waits for the guest.
func (v *VM) Start(ctx context.Context, s keep.Spec) (keep.Instance, error) {
	if v.support == nil {
		return nil, errors.New("vm keeps: not provisioned")
	}
	if err := keep.CheckDir(s.Dir); err != nil {
		return nil, err
	}
	m, err := v.Machine(s)
	if err != nil {
		return nil, err
	}
	req, err := v.launchRequest(s)
	if err != nil {
		return nil, err
	}
	var fsd *Virtiofsd
	if len(s.Volumes) > 0 {
		if fsd, err = v.virtiofsd(); err != nil {
			return nil, fmt.Errorf("vm keeps: the keep has %d volumes: %w", len(s.Volumes), err)
		}
		m.FS = volumeFS(s.Dir, len(s.Volumes))
	}
	args, err := m.Args()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	console, err := os.OpenFile(filepath.Join(s.Dir, ConsoleLog), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	// The keep's log (QEMU's complaints, the guest's log lines and state
	// changes) goes to its output file, as a process keep's does.
	out, err := keeplog.Create(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("keep output file: %w", err)
	}
	vi := &vmInstance{dir: s.Dir, req: req, tap: v.ChannelTap, attach: s.AttachTimeout, out: out,
		channelDone: make(chan struct{}), waited: make(chan struct{})}
	vi.limitOutput(s.MaxOutput)
	if fsd != nil {
		// The sockets listen before QEMU starts; the daemons get them
		// once QEMU's process group exists.
		if vi.volumes, err = listenVolumes(fsd, s.Dir, s.Volumes); err != nil {
			out.Close()
			return nil, err
		}
		vi.volumes.logf, vi.volumes.waited = vi.logLine, vi.waited
	}
	cmd := exec.Command(v.support.QEMU, args...)
	cmd.Dir = s.Dir
	cmd.Stdout = console
	cmd.Stderr = &lineWriter{w: vi.logLine, prefix: "qemu: "}
	cmd.SysProcAttr = keep.ProcAttr()
	if err := cmd.Start(); err != nil {
		if vi.volumes != nil {
			vi.volumes.stop()
		}
		out.Close()
		return nil, fmt.Errorf("starting QEMU: %w", err)
	}
	vi.cmd = cmd
	vi.started = time.Now()
	vi.ticks, _ = keep.StartTicks(cmd.Process.Pid)
	if vi.volumes != nil {
		if err := vi.volumes.start(cmd.Process.Pid); err != nil {
			// QEMU is not reaped yet: its group is still this keep's.
			killGroup(cmd.Process.Pid)
			cmd.Wait()
			vi.volumes.stop()
			out.Close()
			v.Cleanup(s.ID, s.Dir)
			return nil, err
		}
	}
	go func() {
		cmd.Wait()
		close(vi.waited)
	}()
	go func() {
		select {
		case <-vi.overLimit:
			keep.KillGroup(cmd.Process.Pid, vi.ticks)
		case <-vi.waited:
		}
	}()
	return vi, nil
}

// Cleanup implements keep.Launcher: the channel socket QEMU leaves when it
// is killed, and the relay's socket.
func (v *VM) Cleanup(id, dir string) {
	os.Remove(filepath.Join(dir, ChannelSocket))
	os.Remove(filepath.Join(dir, keep.SocketFile))
	socks, _ := filepath.Glob(filepath.Join(dir, "volume*.sock"))
	for _, s := range socks {
		os.Remove(s)
	}
}

type vmInstance struct {
	cmd     *exec.Cmd
	ticks   uint64
	dir     string
	req     *vmproto.LaunchRequest
	attach  time.Duration
	waited  chan struct{} // QEMU ended
	started time.Time
	tap     func(toGuest bool, p []byte)

	logMu     sync.Mutex
	out       *os.File         // the keep's output file; closed once the keep ended
	limited   *keeplog.Limited // out, capped (limitOutput)
	overLimit chan struct{}    // closed when the output reached its cap
	outFull   atomic.Bool      // the exit record says so: the guest's does not replace it

	host        *vmproto.Host
	channelDone chan struct{} // the channel's events and exit status are in
	helloOnce   sync.Once

	volumes *volumeDaemons // the volumes' virtiofsd processes; nil without volumes
}

var _ keep.Instance = (*vmInstance)(nil)

func (vi *vmInstance) PID() int           { return vi.cmd.Process.Pid }
func (vi *vmInstance) StartTicks() uint64 { return vi.ticks }
func (vi *vmInstance) What() string       { return "the keep VM (QEMU)" }

func (vi *vmInstance) logLine(line string) {
	vi.logMu.Lock()
	defer vi.logMu.Unlock()
	if len(line) > keep.MaxLogLine {
		line = line[:keep.MaxLogLine]
	}
	switch {
	case vi.out == nil:
	case vi.limited != nil:
		vi.limited.Write([]byte(line + "\n"))
	default:
		vi.out.Write([]byte(line + "\n"))
	}
}

// defaultMaxOutput caps a VM keep's output file when its spec names no
// cap: a process keep's default (host.DefaultMaxOutput, checked by a test).
const defaultMaxOutput = 64 << 20

// limitOutput caps the keep's output file at max bytes (0: the default),
// as a process keep caps its own (--max-output): the guest is untrusted,
// and its log lines, a detached workload's output and the relay's notes
// must not fill the host's disk. Past the cap: one last line, the exit
// record "failed", and the VM is killed.
func (vi *vmInstance) limitOutput(max int64) {
	if max <= 0 {
		max = defaultMaxOutput
	}
	var from int64
	if st, err := vi.out.Stat(); err == nil {
		from = st.Size()
	}
	raw := vi.out
	vi.overLimit = make(chan struct{})
	vi.limited = &keeplog.Limited{W: raw, Max: max, From: from, OnLimit: func() {
		msg := fmt.Sprintf("output limit of %d bytes reached", max)
		raw.Write([]byte("keep failed: " + msg + "\n"))
		vi.outFull.Store(true)
		keep.WriteExitRecord(vi.dir, keep.ExitRecord{State: vmproto.StateFailed, Reason: msg})
		close(vi.overLimit)
	}}
}

// dial connects to the VM's channel as soon as QEMU has created its
// socket, unless QEMU ends first.
func (vi *vmInstance) dial(ctx context.Context) (net.Conn, error) {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-vi.waited:
			cancel()
		case <-dctx.Done():
		}
	}()
	c, err := vmproto.Dial(dctx, filepath.Join(vi.dir, ChannelSocket))
	if err != nil {
		select {
		case <-vi.waited:
			return nil, fmt.Errorf("QEMU ended before its channel was open (%s)", vi.cmd.ProcessState)
		default:
		}
		return nil, err
	}
	return c, nil
}

// Hello implements keep.Instance: the channel's handshake (the guest's
// boot, the launch request, the keep's evidence). Then the instance
// serves the keep's delivery endpoint and relays it over the channel.
func (vi *vmInstance) Hello(ctx context.Context) ([]byte, error) {
	var hello []byte
	err := errors.New("hello asked twice")
	vi.helloOnce.Do(func() {
		hello, err = vi.handshake(ctx)
		if err != nil {
			close(vi.channelDone)
		}
	})
	return hello, err
}

func (vi *vmInstance) handshake(ctx context.Context) ([]byte, error) {
	conn, err := vi.dial(ctx)
	if err != nil {
		return nil, err
	}
	// The boot's phases, as the host sees them, go to the keep's log:
	// QEMU up (its channel socket), the guest's castellan up (its first
	// byte on the channel: kernel boot and castellan's init), the hello
	// (the keep's key and evidence).
	vi.logLine(fmt.Sprintf("vm: channel open %s after QEMU started", ms(time.Since(vi.started))))
	tc := &timedConn{Conn: conn, tap: vi.tap}
	h, err := vmproto.Handshake(ctx, tc, vi.req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A channel that ends early usually means QEMU is ending: give its
		// status a moment to arrive, it says more than the EOF.
		select {
		case <-vi.waited:
			return nil, fmt.Errorf("%w (QEMU: %s)", err, vi.cmd.ProcessState)
		case <-time.After(2 * time.Second):
		}
		return nil, err
	}
	vi.host = h
	if up := tc.first.Load(); up != nil {
		vi.logLine(fmt.Sprintf("vm: guest castellan up %s after QEMU started; hello %s later", ms(up.Sub(vi.started)), ms(time.Since(*up))))
	}
	sock := filepath.Join(vi.dir, keep.SocketFile)
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		h.Close()
		return nil, err
	}
	os.Chmod(sock, 0o600)
	go vi.events()
	go vi.serve(ln)
	return h.Hello(), nil
}

// events turns the channel's events into log lines and its exit status
// into the keep's exit record.
func (vi *vmInstance) events() {
	defer close(vi.channelDone)
	for e := range vi.host.Events() {
		if e.Kind == vmproto.EventState {
			vi.logLine(keep.StateLine + e.Text)
		} else {
			vi.logLine(e.Text)
		}
	}
	x, err := vi.host.Wait()
	if err != nil {
		vi.logLine("vm channel: " + err.Error())
		return
	}
	if vi.outFull.Load() {
		return
	}
	keep.WriteExitRecord(vi.dir, keep.ExitRecord{State: x.State, ExitCode: x.ExitCode, Reason: x.Reason})
}

// serve accepts one connection on the keep's socket and relays it to the
// delivery stream of the channel. The stream is closed when serve ends,
// however it ends (no client, the client gone): bytes the guest still
// sends are then dropped, not left to stall the channel's reader before
// the keep's logs and exit status.
func (vi *vmInstance) serve(ln *net.UnixListener) {
	defer vi.host.Stream().Close()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-vi.host.Done():
		case <-stop:
		}
		ln.Close()
	}()
	ln.SetDeadline(time.Now().Add(vi.attach + 10*time.Second))
	c, err := ln.AcceptUnix()
	ln.Close()
	os.Remove(filepath.Join(vi.dir, keep.SocketFile))
	if err != nil {
		return
	}
	defer c.Close()
	st := vi.host.Stream()
	done := make(chan struct{})
	go func() {
		io.Copy(st, c)
		st.(interface{ CloseWrite() error }).CloseWrite()
		close(done)
	}()
	io.Copy(c, st)
	c.CloseWrite()
	select {
	case <-done:
	case <-vi.host.Done():
	}
}

// Wait implements keep.Instance: QEMU's end, then the channel's last
// events and exit record, then the end of the log.
func (vi *vmInstance) Wait() *os.ProcessState {
	<-vi.waited
	if vi.volumes != nil {
		vi.volumes.stop()
	}
	// QEMU closed the channel as it ended; a handshake that never
	// started (the VM died first) has nothing to finish.
	vi.helloOnce.Do(func() { close(vi.channelDone) })
	select {
	case <-vi.channelDone:
	case <-time.After(5 * time.Second):
	}
	vi.logMu.Lock()
	if vi.out != nil {
		vi.out.Close()
		vi.out = nil
	}
	vi.logMu.Unlock()
	return vi.cmd.ProcessState
}

// lineWriter calls w for each line written to it.
type lineWriter struct {
	w      func(string)
	prefix string
	buf    []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := strings.IndexByte(string(l.buf), '\n')
		if i < 0 {
			break
		}
		l.w(l.prefix + strings.TrimRight(string(l.buf[:i]), "\r"))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > keep.MaxLogLine {
		l.w(l.prefix + string(l.buf[:keep.MaxLogLine]))
		l.buf = l.buf[:0]
	}
	return len(p), nil
}

// timedConn notes when its first bytes arrive, and shows the bytes to a
// tap.
type timedConn struct {
	net.Conn
	first atomic.Pointer[time.Time]
	tap   func(toGuest bool, p []byte)
}

func (c *timedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && c.first.Load() == nil {
		t := time.Now()
		c.first.CompareAndSwap(nil, &t)
	}
	if n > 0 && c.tap != nil {
		c.tap(false, p[:n])
	}
	return n, err
}

func (c *timedConn) Write(p []byte) (int, error) {
	if c.tap != nil {
		c.tap(true, p)
	}
	return c.Conn.Write(p)
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }
