// Package vmguest is castellan as PID 1 of a VM keep: started by the
// kernel as /init of the keep image (no arguments), it mounts what a keep
// needs, loads the image's kernel modules, opens the virtio-serial port
// named "castellan", reads the host's launch request (package vmproto),
// mounts the keep's volumes (virtio-fs) and runs the same keep code as a
// process keep (host.RunKeep): key and
// evidence made inside, confidential delivery, the workload, its exit
// status. Then it powers the VM off. It never panics on purpose nor exits
// (PID 1 exiting is a kernel panic): every failure prints one line on the
// console, is sent to the host when the channel is open, and powers off.
package vmguest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// Marker is the kernel command line word of a keep image.
const Marker = "castellan.keep=1"

// IsKeepGuest reports whether this process is PID 1 of a keep image.
func IsKeepGuest() bool {
	if os.Getpid() != 1 {
		return false
	}
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		// /proc is not mounted yet in a fresh initramfs: PID 1 of a
		// castellan binary is a keep guest.
		return true
	}
	return strings.Contains(" "+strings.TrimSpace(string(b))+" ", " "+Marker+" ")
}

// machine is what the guest needs of the kernel (a fake in tests).
type machine interface {
	Setup(logf func(string, ...any)) error            // mounts and modules
	OpenPort(name string) (io.ReadWriteCloser, error) // the virtio-serial port
	Uptime() time.Duration                            // since the kernel started
	CPUTime() time.Duration                           // this process's CPU time
	PowerOff()                                        // sync and power off; does not return

	// MountVolume mounts the virtio-fs device tag in a folder of its own,
	// read-only if asked, and returns the folder.
	MountVolume(tag string, readOnly bool) (string, error)
}

// Main is the PID 1 program; it does not return.
func Main() {
	m := linuxMachine{}
	console := os.Stderr
	run(m, console)
	m.PowerOff()
}

// run is the guest's life up to its power-off.
func run(m machine, console io.Writer) {
	g := &guest{m: m, console: console}
	defer func() {
		if r := recover(); r != nil {
			g.fatal(fmt.Errorf("internal error: %v", r))
		}
	}()
	if err := g.run(); err != nil {
		g.fatal(err)
	}
}

type guest struct {
	m       machine
	console io.Writer
	ch      *vmproto.Guest
	exitMu  sync.Mutex
	exited  bool
}

func (g *guest) consolef(format string, a ...any) {
	fmt.Fprintf(g.console, "castellan: "+format+"\n", a...)
}

// fatal reports err on the console and, if the channel is open and no
// exit status went yet, to the host.
func (g *guest) fatal(err error) {
	g.consolef("keep guest: error: %v", err)
	if g.ch != nil {
		g.sendExit(vmproto.Exit{State: vmproto.StateFailed, Reason: err.Error()})
	}
}

func (g *guest) sendExit(x vmproto.Exit) {
	g.exitMu.Lock()
	defer g.exitMu.Unlock()
	if g.exited {
		return
	}
	g.exited = true
	if err := g.ch.Exit(x); err != nil {
		g.consolef("keep guest: error: sending the exit status: %v", err)
	}
}

func (g *guest) run() error {
	if err := g.m.Setup(g.consolef); err != nil {
		return err
	}
	g.consolef("keep guest: init at %.3fs after kernel start", g.m.Uptime().Seconds())
	port, err := g.m.OpenPort(vmproto.PortName)
	if err != nil {
		return err
	}
	ch, req, err := vmproto.Accept(port)
	if err != nil {
		return err
	}
	g.ch = ch
	ch.Log(fmt.Sprintf("guest: castellan init at %.3fs after kernel start; launch request for backend %s", g.m.Uptime().Seconds(), req.Backend))
	p, err := params(req)
	if err != nil {
		return err
	}
	if p.Volumes, err = g.mountVolumes(req.Volumes); err != nil {
		return err
	}
	p.ApplyLimits = g.applyLimits
	p.SecretService = secretService(req, ch)
	go func() {
		if err := <-ch.ProtocolErrors(); err != nil {
			g.fatal(err)
			g.m.PowerOff()
		}
	}()
	kio := host.KeepIO{
		Logf:  func(format string, a ...any) { ch.Log(fmt.Sprintf(format, a...)) },
		State: func(s string) { ch.State(s) },
		Hello: ch.Hello,
		Accept: func(timeout time.Duration) (net.Conn, error) {
			return firstByte(ch.Stream(), timeout)
		},
		HostOutput: &lineWriter{send: func(s string) { ch.Log(s) }},
		Ended: func(r host.ExitRecord) {
			g.sendExit(vmproto.Exit{State: r.State, ExitCode: r.ExitCode, Reason: r.Reason})
		},
		Terminate: func(int) { g.m.PowerOff() },
	}
	host.RunKeep(context.Background(), p, kio)
	return nil
}

// params turns the launch request into the keep's parameters. A
// simulated backend signs with the CA the host sent.
func params(req *vmproto.LaunchRequest) (host.KeepParams, error) {
	p := host.KeepParams{Spec: keep.Spec{
		Backend: req.Backend, Nonce: req.Nonce, Digest: req.Digest, ClientKey: req.ClientKey,
		AttachTimeout: req.AttachTimeout(),
		Limits: host.Limits{MemoryBytes: req.Limits.MemoryBytes, CPUSeconds: req.Limits.CPUSeconds,
			WallSeconds: req.Limits.WallSeconds, OpenFiles: req.Limits.OpenFiles},
	}}
	if req.Backend == tee.NameSimSNP || req.Backend == tee.NameSimTDX {
		ca, err := sim.ParsePEM(req.SimCA)
		if err != nil {
			return p, fmt.Errorf("launch request: %w", err)
		}
		platform := evidence.PlatformSNP
		if req.Backend == tee.NameSimTDX {
			platform = evidence.PlatformTDX
		}
		s := tee.NewSim(platform, ca)
		s.SNP.Measurement = req.SimMeasurement
		p.Evidence = s
	}
	return p, nil
}

// secretService is the service the keep fetches its config's
// [secrets.kbs] from, over connections the host relays on the channel (the
// VM has no network); nil when the host named none.
func secretService(req *vmproto.LaunchRequest, ch *vmproto.Guest) *delivery.SecretService {
	svc := req.SecretService()
	if svc != nil {
		// The host dials its own service: the address the HTTP client
		// asks for is the URL's, so there is nothing to pass on.
		svc.Dial = func(ctx context.Context, _, _ string) (net.Conn, error) { return ch.DialSecretService(ctx) }
	}
	return svc
}

// mountVolumes mounts the keep's volumes (virtio-fs devices) and returns
// them as the keep's volumes: the keep preopens each folder for the
// workload, as a process keep preopens the host's (host.RunKeep).
func (g *guest) mountVolumes(vols []vmproto.Volume) ([]keep.Volume, error) {
	var out []keep.Volume
	for _, v := range vols {
		dir, err := g.m.MountVolume(v.Tag, v.ReadOnly)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Guest, err)
		}
		out = append(out, keep.Volume{Guest: v.Guest, Host: dir, ReadOnly: v.ReadOnly})
	}
	return out, nil
}

// applyLimits applies the keep's limits inside the VM: memory and files
// by setrlimit as for a process keep; CPU time by watching this process's
// CPU clock, because the kernel does not kill PID 1 at RLIMIT_CPU. The
// VM's size and the host's wall-time kill bound the rest.
func (g *guest) applyLimits(l host.Limits) error {
	if err := setrlimits(l); err != nil {
		return err
	}
	if l.CPUSeconds > 0 {
		limit := time.Duration(l.CPUSeconds) * time.Second
		go func() {
			for range time.Tick(time.Second) {
				if g.m.CPUTime() >= limit {
					g.fatal(fmt.Errorf("CPU time limit of %ds reached", l.CPUSeconds))
					g.m.PowerOff()
				}
			}
		}()
	}
	return nil
}

// firstByte waits up to timeout for the client's first byte on c and
// returns c with that byte put back: the attach timeout of a VM keep.
func firstByte(c net.Conn, timeout time.Duration) (net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(timeout))
	b := make([]byte, 1)
	n, err := c.Read(b)
	c.SetReadDeadline(time.Time{})
	if n == 0 {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return &prefixConn{Conn: c, prefix: b[:n]}, nil
}

type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// lineWriter sends a detached workload's host output as log lines.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	send func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			// An incomplete line waits for its end, up to the line limit.
			if len(line) >= vmproto.MaxLog {
				w.send(line)
			} else {
				w.buf.WriteString(line)
			}
			return len(p), nil
		}
		w.send(strings.TrimSuffix(line, "\n"))
	}
}

var errNoPort = errors.New("no virtio-serial port named " + vmproto.PortName)

// findPort returns the /dev node of the virtio port called name, from
// sysfs (/sys/class/virtio-ports/vportNpM/name).
func findPort(sysClass, dev, name string) (string, error) {
	ents, err := os.ReadDir(sysClass)
	if err != nil {
		return "", fmt.Errorf("%w: %v", errNoPort, err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(sysClass + "/" + e.Name() + "/name")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		if sc.Scan() && sc.Text() == name {
			return dev + "/" + e.Name(), nil
		}
	}
	return "", errNoPort
}
