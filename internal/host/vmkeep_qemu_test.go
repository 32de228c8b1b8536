package host

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keepimage"
)

// The keep image is built once per test binary and shared by every test
// that boots a VM: a TCG boot takes seconds to tens of seconds, so the
// tests boot only as many VMs as their assertions need.
var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
	imageSkip string
)

// keepImage returns the shared keep image, or skips the test when QEMU or a
// kernel is missing (scripts/test installs QEMU and fetches a kernel, so CI
// runs these tests).
func keepImage(t testing.TB) string {
	t.Helper()
	imageOnce.Do(func() {
		if _, err := exec.LookPath(qemu.Program); err != nil {
			imageSkip = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86; scripts/test does)"
			return
		}
		kernel, mods, err := keepimage.FindKernel()
		if err != nil {
			imageSkip = fmt.Sprintf("no kernel for the keep image: %v (scripts/test fetches one)", err)
			return
		}
		root, err := fixtures.RepoRoot()
		if err != nil {
			imageErr = err
			return
		}
		dir, err := os.MkdirTemp("", "cst-image-")
		if err != nil {
			imageErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		if _, err := keepimage.Build(ctx, keepimage.Options{Out: dir, Kernel: kernel, Modules: mods, Source: root}); err != nil {
			imageErr = fmt.Errorf("building the keep image: %w", err)
			return
		}
		imageDir = dir
	})
	if imageSkip != "" {
		t.Skip(imageSkip)
	}
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageDir
}

// vmHarness is an agent whose keeps are real QEMU VMs of the shared image;
// channel receives every byte of their channels.
func vmHarness(t *testing.T, channel *syncBuffer) *harness {
	img := keepImage(t)
	return newHarness(t, func(c *Config) {
		c.Launcher = &qemu.VM{Image: img, Warnf: t.Logf, ChannelTap: func(_ bool, p []byte) { channel.Write(p) }}
		c.ReadyTimeout = 5 * time.Minute // a TCG boot on a loaded machine
	})
}

// TestVMKeep is the end-to-end test of VM keeps: the host agent boots a
// VM keep with sim-snp evidence and `deploy --host`'s code path sends it a
// workload confidentially (a config marker as an argument, a secret in the
// environment); the output and exit status come back. Then the agent's
// state, log, events, relay, every byte of the VM's channel and every file
// of its state folder (the keep's console log included) are searched for
// the plaintext, and the keep's
// folder must hold nothing but its records. A second keep of the same
// image shows the image is reused, not rebuilt.
func TestVMKeep(t *testing.T) {
	const workloadMarker = "MARKER-IN-THE-VM-WORKLOAD-2b7e41"
	const secretMarker = "MARKER-IN-THE-VM-SECRET-8d03aa"
	var channel syncBuffer
	h := vmHarness(t, &channel)
	cfg := []byte(fmt.Sprintf("args = [%q]\n[secrets]\nenv = [\"API_KEY\"]\n%s", workloadMarker, stdio))
	art := artifact(t, fixtures.C(t, "hello"), cfg)
	v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	k, res, out, errOut, err := h.deploy(ctx, "sim-snp", art, v, func(o *DeployOptions) {
		o.Delivery.Secrets = map[string]string{"API_KEY": secretMarker}
	})
	if err != nil {
		t.Fatalf("deploy: %v (stderr %q)\nagent log:\n%s", err, errOut, h.log)
	}
	t.Logf("VM keep: deployed and ran in %v", time.Since(start))
	if res.ExitCode != 0 || out != "hello from C in a keep\narg[0]=main.wasm\narg[1]="+workloadMarker+"\n" {
		t.Fatalf("result %+v, stdout %q, stderr %q", res, out, errOut)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateExited || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Fatalf("keep ended as %s (%s)", end.State, end.Reason)
	}
	if k.Platform != "snp" {
		t.Errorf("platform %q", k.Platform)
	}

	// The same image again, with a failing status this time.
	failArt := artifact(t, fixtures.C(t, "trap"), []byte(stdio))
	k2, res2, _, _, err := h.deploy(ctx, "sim-snp", failArt, v, nil)
	if err != nil {
		t.Fatalf("second deploy: %v", err)
	}
	if res2.ExitCode == 0 && res2.Reason == "" {
		t.Errorf("the trapping workload reported success: %+v", res2)
	}
	h.waitEnded(k2.ID)

	for _, id := range []string{k.ID, k2.ID} {
		assertOnlyRecords(t, filepath.Join(h.stateDir, "keeps", id))
	}
	console, _ := os.ReadFile(filepath.Join(h.stateDir, "keeps", k.ID, qemu.ConsoleLog))
	places := h.places(ctx, k.ID, k2.ID)
	places["vm channel"] = channel.Bytes()
	for _, where := range []string{"relay", "vm channel"} {
		if len(places[where]) < len(art.Wasm) {
			t.Fatalf("the %s saw %d bytes, less than the module: the test would prove nothing", where, len(places[where]))
		}
	}
	for where, b := range places {
		for _, m := range []string{workloadMarker, secretMarker} {
			if bytes.Contains(b, []byte(m)) {
				t.Errorf("%s holds the plaintext marker %s", where, m)
			}
		}
	}
	if len(console) == 0 {
		t.Errorf("the keep's console log is empty: the no-plaintext search would not have covered it")
	}
	assertNoTemp(t, k.ID)
}

// assertNoTemp checks that nothing of a keep is left in the temporary
// folder (QEMU's sockets live in the keep's folder only).
func assertNoTemp(t *testing.T, id string) {
	t.Helper()
	ents, _ := os.ReadDir(os.TempDir())
	for _, e := range ents {
		if strings.Contains(e.Name(), id) {
			t.Errorf("%s left in %s", e.Name(), os.TempDir())
		}
	}
}

// TestVMKeepLimits boots two VM keeps: one whose workload spins until the
// wall-time limit ends its VM, and one whose QEMU is killed from outside;
// both are reported as the keep's death and leave no process behind.
func TestVMKeepLimits(t *testing.T) {
	h := vmHarness(t, &syncBuffer{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	// The killed one: ready, then its QEMU gets SIGKILL.
	killed := h.create(t, "nil", Limits{})
	if err := kill(killed.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	end := h.waitEnded(killed.ID)
	if end.State != StateFailed || end.Signal != "SIGKILL" || !strings.Contains(end.Reason, "killed by signal SIGKILL") {
		t.Errorf("killed VM keep ended as %s, signal %q, reason %q", end.State, end.Signal, end.Reason)
	}
	assertOnlyRecords(t, filepath.Join(h.stateDir, "keeps", killed.ID))

	// The spinning one: detached, so that the client returns once it runs;
	// its wall time counts from creation and covers the boot.
	const wall = 150
	art := artifact(t, fixtures.C(t, "spin"), []byte(stdio))
	v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
	k, _, _, _, err := h.deploy(ctx, "nil", art, v, func(o *DeployOptions) {
		o.Limits.WallSeconds = wall
		o.Delivery.Detach = true
	})
	if err != nil {
		t.Fatalf("deploy: %v\nagent log:\n%s", err, h.log)
	}
	end = h.waitEndedWithin(k.ID, wall*time.Second+time.Minute)
	if end.State != StateFailed || !strings.Contains(end.Reason, fmt.Sprintf("wall time limit of %ds reached", wall)) {
		t.Errorf("spinning VM keep ended as %s (%s)", end.State, end.Reason)
	}
	var evs bytes.Buffer
	h.client.Events(ctx, k.ID, false, func(e Event) { fmt.Fprintf(&evs, "%s %s\n", e.Type, e.Message) })
	if !strings.Contains(evs.String(), "running ") {
		t.Errorf("the spinning keep never ran its workload:\n%s", evs.String())
	}
	if err := kill(-k.PID, 0); err == nil {
		t.Errorf("QEMU's process group %d is still there", k.PID)
	}
	assertOnlyRecords(t, filepath.Join(h.stateDir, "keeps", k.ID))
}
