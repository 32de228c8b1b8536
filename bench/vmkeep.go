package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

var (
	vmImage = flag.String("keep-image", "", "vm: the keep image to boot (default: build one with 'castellan keep-image build')")
	vmRuns  = flag.Int("vm-runs", 3, "vm: VM keeps to boot")
)

// phases of one keep, from just before its launcher's Start.
type phases struct {
	channel, up, hello, verified, firstOutput, done time.Duration
	guestUptime                                     time.Duration // the guest's own clock at castellan's start, if it says
}

var (
	channelRE = regexp.MustCompile(`^vm: channel open (\d+)ms after QEMU started`)
	upRE      = regexp.MustCompile(`^vm: guest castellan up (\d+)ms after QEMU started`)
	uptimeRE  = regexp.MustCompile(`(?:uptime |init at )(\d+(?:\.\d+)?)s`)
)

// vmBench measures a VM keep's start to its first workload output, split
// into the phases the host sees (QEMU start, kernel boot and castellan's
// init, the keep's key and evidence, delivery to the first output), and the
// same keep work as a process keep on this host, natively: the ratio of
// the two is the emulation's slowdown, which turns the TCG figures into a
// prediction for KVM.
func vmBench(t *tools) error {
	runs := *vmRuns
	if *quick {
		runs = 1
	}
	img := *vmImage
	if img == "" {
		img = filepath.Join(t.dir, "image")
		step("vm: building the keep image (castellan keep-image build)")
		cmd := exec.Command(t.castellan, "keep-image", "build", "-o", img)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("keep-image build: %v\n%s", err, b)
		}
	}
	wasmPath, err := fixtures.BuildC("hello")
	if err != nil {
		return err
	}
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		return err
	}
	art, err := workload.New(wasm, nil)
	if err != nil {
		return err
	}
	vm := &qemu.VM{Image: img, Warnf: func(f string, a ...any) { step("vm: warning: "+f, a...) }}
	if err := vm.Provision(); err != nil {
		return err
	}
	proc := &keep.Process{Command: []string{t.castellan, "keep"}}
	if err := proc.Provision(); err != nil {
		return err
	}
	var vms, procs []phases
	for i := 0; i < runs; i++ {
		step("vm: run %d of %d: VM keep", i+1, runs)
		p, err := oneKeep(vm, art, t.dir)
		if err != nil {
			return fmt.Errorf("vm keep: %w", err)
		}
		vms = append(vms, p)
		step("vm: run %d of %d: process keep", i+1, runs)
		if p, err = oneKeep(proc, art, t.dir); err != nil {
			return fmt.Errorf("process keep: %w", err)
		}
		procs = append(procs, p)
	}
	printVM(img, vm.Support().Accel, vms, procs)
	return nil
}

// oneKeep starts a keep with sim-snp evidence, verifies it, delivers the
// C hello and notes when each phase ended.
func oneKeep(l keep.Launcher, art *workload.Artifact, base string) (phases, error) {
	var p phases
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp(base, "k")
	if err != nil {
		return p, err
	}
	defer os.RemoveAll(dir)
	sess, err := delivery.NewSession()
	if err != nil {
		return p, err
	}
	v := &delivery.InsecureVerifier{}
	if roots, _, err := tee.SimRoots(); err == nil {
		v.SimRoots = roots
	}
	nonce, _ := v.Nonce(ctx)
	spec := keep.Spec{ID: filepath.Base(dir), Dir: dir, Backend: tee.NameSimSNP, Nonce: nonce, Digest: art.Digest.String(),
		ClientKey: sess.KeyHash, AttachTimeout: time.Minute}
	start := time.Now()
	inst, err := l.Start(ctx, spec)
	if err != nil {
		return p, err
	}
	defer l.Cleanup(spec.ID, dir)
	defer keep.KillGroup(inst.PID(), inst.StartTicks())
	hello, err := inst.Hello(ctx)
	if err != nil {
		return p, err
	}
	p.hello = time.Since(start)
	h, _, err := delivery.ParseHello(hello)
	if err != nil {
		return p, err
	}
	verified, err := v.Verify(ctx, h, nonce, art.Digest.String())
	if err != nil {
		return p, err
	}
	p.verified = time.Since(start)
	conn, err := net.Dial("unix", filepath.Join(dir, keep.SocketFile))
	if err != nil {
		return p, err
	}
	out := &firstWrite{start: start}
	res, err := sess.Deliver(ctx, conn, verified, delivery.Delivery{Artifact: art, Name: "hello", Stdout: out, Stderr: out})
	if err != nil {
		return p, err
	}
	if res.ExitCode != 0 {
		return p, fmt.Errorf("the workload exited with %d (%s)", res.ExitCode, res.Reason)
	}
	p.done = time.Since(start)
	if out.at == 0 {
		return p, errors.New("no output")
	}
	p.firstOutput = out.at
	inst.Wait()
	// The launcher logged the boot's phases to the keep's output file.
	b, err := os.ReadFile(keeplog.Path(dir))
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if m := channelRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			p.channel = time.Duration(n) * time.Millisecond
		}
		if m := upRE.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			p.up = time.Duration(n) * time.Millisecond
		}
		if m := uptimeRE.FindStringSubmatch(line); m != nil && p.guestUptime == 0 {
			f, _ := strconv.ParseFloat(m[1], 64)
			p.guestUptime = time.Duration(f * float64(time.Second))
		}
	}
	return p, nil
}

// firstWrite notes when the first output arrived.
type firstWrite struct {
	start time.Time
	at    time.Duration
}

func (f *firstWrite) Write(b []byte) (int, error) {
	if f.at == 0 {
		f.at = time.Since(f.start)
	}
	return len(b), nil
}

func medianOf(ps []phases, f func(phases) time.Duration) time.Duration {
	var ds []time.Duration
	for _, p := range ps {
		ds = append(ds, f(p))
	}
	for i := range ds {
		for j := i + 1; j < len(ds); j++ {
			if ds[j] < ds[i] {
				ds[i], ds[j] = ds[j], ds[i]
			}
		}
	}
	return ds[len(ds)/2]
}

func printVM(img, accel string, vms, procs []phases) {
	size := func(f string) string {
		st, err := os.Stat(filepath.Join(img, f))
		if err != nil {
			return "?"
		}
		return fmt.Sprintf("%.1f MB", float64(st.Size())/1e6)
	}
	fmt.Printf("\n## VM keep: start to first workload output (%s, C hello, sim-snp, median of %d)\n\n", accel, len(vms))
	fmt.Printf("initramfs %s, kernel %s\n\n", size(qemu.ImageInitrd), size(qemu.ImageKernel))
	m := func(ps []phases, f func(phases) time.Duration) time.Duration { return medianOf(ps, f) }
	qemuStart := m(vms, func(p phases) time.Duration { return p.channel })
	boot := m(vms, func(p phases) time.Duration { return p.up - p.channel })
	attest := m(vms, func(p phases) time.Duration { return p.hello - p.up })
	verify := m(vms, func(p phases) time.Duration { return p.verified - p.hello })
	deliver := m(vms, func(p phases) time.Duration { return p.firstOutput - p.verified })
	total := m(vms, func(p phases) time.Duration { return p.firstOutput })
	pAttest := m(procs, func(p phases) time.Duration { return p.hello })
	pDeliver := m(procs, func(p phases) time.Duration { return p.firstOutput - p.verified })
	pTotal := m(procs, func(p phases) time.Duration { return p.firstOutput })
	fmt.Printf("| phase | VM keep (%s) | process keep (native) |\n|---|---|---|\n", accel)
	fmt.Printf("| QEMU start (exec to channel socket) | %s | |\n", ms(qemuStart))
	if up := m(vms, func(p phases) time.Duration { return p.guestUptime }); up > 0 {
		fmt.Printf("| firmware, kernel load and decompression (to the guest clock's start) | %s | |\n", ms(boot-up))
		fmt.Printf("| kernel boot + castellan init (the guest's clock at castellan's launch request) | %s | |\n", ms(up))
	} else {
		fmt.Printf("| firmware + kernel boot + castellan init (socket to the guest's first byte) | %s | |\n", ms(boot))
	}
	fmt.Printf("| attestation (key, evidence, hello) | %s | %s (process start to hello) |\n", ms(attest), ms(pAttest))
	fmt.Printf("| client verification | %s | |\n", ms(verify))
	fmt.Printf("| delivery to first output (TLS, package, compile, run) | %s | %s |\n", ms(deliver), ms(pDeliver))
	fmt.Printf("| **start to first output** | **%s** | %s |\n", ms(total), ms(pTotal))
	if accel == qemu.AccelTCG && attest+deliver > 0 && pAttest+pDeliver > 0 {
		slow := float64(attest+deliver) / float64(pAttest+pDeliver)
		host := qemuStart + pAttest + verify + pDeliver
		fmt.Printf("\nemulation slowdown of the guest's castellan (attestation and delivery under TCG / the same work native): %.1fx\n", slow)
		fmt.Printf("on KVM the guest runs at native speed: QEMU start %s + attestation %s + verification %s + delivery %s = %s, plus the firmware and kernel boot on KVM (not measurable here)\n",
			ms(qemuStart), ms(pAttest), ms(verify), ms(pDeliver), ms(host))
	}
}
