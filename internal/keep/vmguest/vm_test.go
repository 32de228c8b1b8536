package vmguest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/workload"
)

// testImage builds a keep image from this source tree into a fresh folder,
// or skips when QEMU or a kernel is missing (scripts/test provides both).
func testImage(t testing.TB) (qemu, dir string) {
	t.Helper()
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86; scripts/test does)")
	}
	kernel, mods, err := keepimage.FindKernel()
	if err != nil {
		t.Skipf("no kernel for a keep image: %v", err)
	}
	root, err := fixtures.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	if _, err := keepimage.Build(ctx, keepimage.Options{Out: dir, Kernel: kernel, Modules: mods, Source: root,
		Progress: t.Logf}); err != nil {
		t.Fatal(err)
	}
	return qemu, dir
}

// stamp is a timestamped milestone of a VM keep's start.
type stamps struct {
	mu  sync.Mutex
	t0  time.Time
	log []string
}

func (s *stamps) mark(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.log = append(s.log, fmt.Sprintf("%7.3fs %s", time.Since(s.t0).Seconds(), what))
}

// firstWrite marks the first write to it.
type firstWrite struct {
	once sync.Once
	s    *stamps
	buf  bytes.Buffer
	mu   sync.Mutex
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(func() { w.s.mark("first workload output") })
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestVMKeep boots the keep image under QEMU TCG with the contract's
// virtio-serial port and runs a C workload in it through the host-side
// API with the nil backend: hello, confidential delivery, output, a
// non-zero exit status, power-off. One boot.
func TestVMKeep(t *testing.T) {
	qemu, img := testImage(t)
	st, console := runVMKeep(t, qemu, img, "")
	t.Logf("timeline (QEMU start = 0):\n%s", strings.Join(st.log, "\n"))
	if fi, err := os.Stat(filepath.Join(img, keepimage.InitrdFile)); err == nil {
		t.Logf("initramfs %d bytes", fi.Size())
	}
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "castellan") {
			t.Logf("console: %s", l)
		}
	}
}

// BenchmarkVMKeepStart times one VM keep's start to its first workload
// output under TCG, by phase. The kernel's own timestamps come from a
// console with printk on (loglevel=7 appended: the benchmark's command
// line differs from the image's by that only).
//
//	CASTELLAN_KERNEL_DIR=... go test -run XXX -bench VMKeepStart -benchtime 1x ./internal/keep/vmguest
func BenchmarkVMKeepStart(b *testing.B) {
	qemu, img := testImage(b)
	for range b.N {
		st, console := runVMKeep(b, qemu, img, "loglevel=7 printk.time=1")
		at := func(what string) float64 {
			for _, l := range st.log {
				if strings.HasSuffix(l, " "+what) {
					var v float64
					fmt.Sscanf(strings.TrimSpace(l), "%fs", &v)
					return v
				}
			}
			b.Fatalf("no %q in %q", what, st.log)
			return 0
		}
		// Kernel time of "Run /init" and castellan's own uptime line.
		var runInit, castellanUp float64
		for _, l := range strings.Split(console, "\n") {
			if i := strings.Index(l, "Run /init as init process"); i >= 0 {
				fmt.Sscanf(strings.TrimLeft(l[strings.Index(l, "[")+1:], " "), "%f]", &runInit)
			}
			if i := strings.Index(l, "keep guest: init at "); i >= 0 {
				fmt.Sscanf(l[i+len("keep guest: init at "):], "%fs", &castellanUp)
			}
		}
		spoke := at("guest castellan spoke (version frame)")
		kernelStart := spoke - castellanUp // approximately: uptime counts from the kernel's start
		b.ReportMetric(kernelStart, "s-qemu+firmware")
		b.ReportMetric(runInit, "s-kernel-boot")
		b.ReportMetric(castellanUp-runInit, "s-castellan-init")
		b.ReportMetric(at("hello received")-spoke, "s-evidence")
		b.ReportMetric(at("state running")-at("hello received"), "s-delivery")
		b.ReportMetric(at("first workload output")-at("state running"), "s-to-first-output")
		b.ReportMetric(at("first workload output"), "s-total")
		b.Logf("timeline (QEMU start = 0):\n%s", strings.Join(st.log, "\n"))
	}
}

// runVMKeep boots img and runs a C workload in it with the nil backend,
// checking output, exit status and power-off; it returns the
// host's timeline and the console log.
func runVMKeep(t testing.TB, qemu, img, extraAppend string) (*stamps, string) {
	// fileio without its folder argument prints a usage line and exits
	// with status 2: output and a non-zero status to carry back.
	art := cFixture(t, "fileio")
	sockDir, err := os.MkdirTemp("", "vmk") // short: sun_path
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "channel.sock")
	console := filepath.Join(t.TempDir(), "console.log")
	cmdline, err := os.ReadFile(filepath.Join(img, keepimage.CmdlineFile))
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
		"-nographic", "-nodefaults", "-no-reboot", "-serial", "file:" + console,
		"-kernel", filepath.Join(img, keepimage.KernelFile), "-initrd", filepath.Join(img, keepimage.InitrdFile),
		"-append", strings.TrimSpace(string(cmdline) + " " + extraAppend),
		"-device", "virtio-serial-pci",
		"-chardev", "socket,id=castellan,path=" + sock + ",server=on,wait=off",
		"-device", "virtserialport,chardev=castellan,name=" + vmproto.PortName,
	}
	st := &stamps{t0: time.Now()}
	cmd := exec.Command(qemu, args...)
	var qout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qout, &qout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	qemuDone := make(chan error, 1)
	go func() { qemuDone <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-qemuDone
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console:\n%s\nqemu: %s", b, qout.String())
		}
	}()
	dctx, dcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	conn, err := vmproto.Dial(dctx, sock)
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st.mark("channel connected")

	sess, err := delivery.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	v := &delivery.InsecureVerifier{}
	nonce, _ := v.Nonce(context.Background())
	req := &vmproto.LaunchRequest{Backend: "nil", Nonce: nonce, Digest: art.Digest.String(), ClientKey: sess.KeyHash,
		AttachTimeoutMillis: 120000}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h, err := vmproto.Handshake(ctx, &markConn{Conn: conn, s: st}, req)
	if err != nil {
		t.Fatal(err)
	}
	st.mark("hello received")
	var events []string
	evDone := make(chan struct{})
	go func() {
		defer close(evDone)
		for e := range h.Events() {
			events = append(events, e.Kind+": "+e.Text)
			if e.Kind == vmproto.EventState {
				st.mark("state " + e.Text)
			}
		}
	}()
	hello, _, err := delivery.ParseHello(h.Hello())
	if err != nil {
		t.Fatal(err)
	}
	ver, err := v.Verify(ctx, hello, nonce, art.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	out := &firstWrite{s: st}
	var stderr bytes.Buffer
	res, err := sess.Deliver(ctx, h.Stream(), ver, delivery.Delivery{Artifact: art,
		Stdout: out, Stderr: &stderr})
	if err != nil {
		t.Fatalf("deliver: %v (stderr %q)", err, stderr.String())
	}
	st.mark("workload exited")
	if res.ExitCode != 2 || out.buf.String() != "FAIL usage: fileio DIR\n" {
		t.Fatalf("exit %d, output %q, stderr %q", res.ExitCode, out.buf.String(), stderr.String())
	}
	x, err := h.Wait()
	if err != nil || x.State != vmproto.StateExited || x.ExitCode == nil || *x.ExitCode != 2 {
		t.Fatalf("keep exit %+v, %v", x, err)
	}
	<-evDone
	select {
	case err := <-qemuDone:
		qemuDone <- err
		if err != nil {
			t.Fatalf("qemu: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the VM did not power off")
	}
	st.mark("VM powered off")
	t.Logf("events:\n%s", strings.Join(events, "\n"))
	b, _ := os.ReadFile(console)
	return st, string(b)
}

// markConn marks the guest's first frame (its castellan is up).
type markConn struct {
	net.Conn
	s    *stamps
	once sync.Once
}

func (c *markConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.once.Do(func() { c.s.mark("guest castellan spoke (version frame)") })
	}
	return n, err
}

func cHello(t testing.TB) *workload.Artifact { return cFixture(t, "hello") }

// cFixture is the C test workload name with the three standard streams.
func cFixture(t testing.TB, name string) *workload.Artifact {
	t.Helper()
	wasm, err := os.ReadFile(fixtures.C(t, name))
	if err != nil {
		t.Fatal(err)
	}
	art, err := workload.New(wasm, []byte("[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	return art
}
