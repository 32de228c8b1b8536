package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keeplog"
	"github.com/castellan-dev/castellan/internal/tee"
)

// fakeQEMUEnv makes the test binary act as QEMU and the guest's castellan
// together: it takes QEMU's arguments, serves the channel socket they name
// and runs the keep side of the VM protocol in-process. It tests the VM
// launcher and the agent's handling of VM keeps in milliseconds; the real
// QEMU tests (vmkeep_qemu_test.go) boot the keep image.
const fakeQEMUEnv = "CASTELLAN_TEST_FAKE_QEMU"

func fakeQEMUMain(args []string) int {
	var sock string
	for i, a := range args {
		if i > 0 && args[i-1] == "-chardev" && strings.HasPrefix(a, "socket,") {
			for _, f := range strings.Split(a, ",") {
				if p, ok := strings.CutPrefix(f, "path="); ok {
					sock = p
				}
			}
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake qemu: no channel socket in the arguments")
		return 1
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	defer os.Remove(sock)
	fmt.Println("fake console: booted") // the serial console is stdout
	conn, err := ln.Accept()
	if err != nil {
		return 1
	}
	g, req, err := vmproto.Accept(conn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	fail := func(format string, a ...any) int {
		g.Exit(vmproto.Exit{State: vmproto.StateFailed, Reason: fmt.Sprintf(format, a...)})
		return 0
	}
	b, err := tee.Open(req.Backend)
	if err != nil {
		return fail("%v", err)
	}
	ctx := context.Background()
	k, err := delivery.NewKeep(ctx, b, req.Nonce, req.Digest, req.ClientKey)
	if err != nil {
		return fail("evidence: %v", err)
	}
	hello, _ := json.Marshal(k.Hello)
	if err := g.Hello(hello); err != nil {
		return 1
	}
	g.Log("evidence made; waiting for the client")
	res, err := k.Serve(ctx, g.Stream(), delivery.ServeOptions{
		Log:     func(f string, a ...any) { g.Log(fmt.Sprintf(f, a...)) },
		Started: func() { g.State("running") },
	})
	if err != nil {
		return fail("delivery: %v", err)
	}
	if res.Reason != "" {
		return fail("workload error (reported to the client)")
	}
	code := res.ExitCode
	g.Exit(vmproto.Exit{State: vmproto.StateExited, ExitCode: &code})
	return 0 // QEMU's status when the guest powers off
}

// fakeVMLauncher is a VM launcher whose QEMU is this test binary.
func fakeVMLauncher(t testing.TB) *qemu.VM {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	img := t.TempDir()
	for _, f := range []string{qemu.ImageKernel, qemu.ImageInitrd, qemu.ImageCmdline} {
		os.WriteFile(filepath.Join(img, f), []byte("fake"), 0o644)
	}
	t.Setenv(fakeQEMUEnv, "1")
	h := qemutest.ThisMachine()
	h.Path = exe
	return &qemu.VM{Image: img, Host: h}
}

// TestVMKeepFake deploys through the agent to a VM keep whose QEMU is
// faked: output and exit status come back, the keep's log and state
// events arrive over the channel, the agent's relay and state hold no
// plaintext, and nothing is left in the keep's folder but its records.
func TestVMKeepFake(t *testing.T) {
	const marker = "MARKER-IN-THE-VM-WORKLOAD-91c3"
	var channel syncBuffer
	vm := fakeVMLauncher(t)
	vm.ChannelTap = func(_ bool, p []byte) { channel.Write(p) }
	h := newHarness(t, func(c *Config) { c.Launcher = vm })
	cfg := []byte(fmt.Sprintf("args = [%q]\n%s", marker, stdio))
	art := artifact(t, fixtures.C(t, "hello"), cfg)
	v := &delivery.InsecureVerifier{SimRoots: simRoots(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, res, out, errOut, err := h.deploy(ctx, "sim-snp", art, v, nil)
	if err != nil {
		t.Fatalf("deploy: %v (stderr %q)", err, errOut)
	}
	if res.ExitCode != 0 || !strings.Contains(out, "arg[1]="+marker) {
		t.Fatalf("result %+v, stdout %q", res, out)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateExited || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Fatalf("keep ended as %s (%s)", end.State, end.Reason)
	}
	var evs bytes.Buffer
	h.client.Events(ctx, k.ID, false, func(e Event) { fmt.Fprintf(&evs, "%s %s\n", e.Type, e.Message) })
	for _, want := range []string{"log vm: channel open", "log vm: guest castellan up", "log evidence made; waiting for the client", "running the keep checked the package"} {
		if !strings.Contains(evs.String(), want) {
			t.Errorf("events lack %q:\n%s", want, evs.String())
		}
	}
	if !strings.Contains(strings.Join(end.Enforcement, "\n"), "VM keep") {
		t.Errorf("enforcement %q does not say VM keep", end.Enforcement)
	}
	dir := filepath.Join(h.stateDir, "keeps", k.ID)
	assertOnlyRecords(t, dir)
	places := h.places(ctx, k.ID)
	places["vm channel"] = channel.Bytes()
	for _, where := range []string{"relay", "vm channel"} {
		if len(places[where]) < len(art.Wasm) {
			t.Fatalf("the %s saw %d bytes, less than the module", where, len(places[where]))
		}
	}
	for where, b := range places {
		if bytes.Contains(b, []byte(marker)) {
			t.Errorf("%s holds the plaintext marker", where)
		}
	}
}

// assertOnlyRecords checks that an ended keep's folder holds its records
// only (exit record, kind, output file, console log): no socket, no
// temporary file.
func assertOnlyRecords(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		switch e.Name() {
		case keep.ExitFile, kindFile, qemu.ConsoleLog, keeplog.FileName:
		default:
			t.Errorf("keep folder holds %s after the keep ended", e.Name())
		}
	}
}

// TestVMKeepFakeKilled kills the (fake) QEMU of a ready keep: the agent
// reports the keep's death with the signal and cleans its folder.
func TestVMKeepFakeKilled(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Launcher = fakeVMLauncher(t) })
	k := h.create(t, "nil", Limits{})
	if err := kill(k.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	end := h.waitEnded(k.ID)
	if end.State != StateFailed || end.Signal != "SIGKILL" || !strings.Contains(end.Reason, "killed by signal SIGKILL") {
		t.Errorf("keep ended as %s, signal %q, reason %q", end.State, end.Signal, end.Reason)
	}
	assertOnlyRecords(t, filepath.Join(h.stateDir, "keeps", k.ID))
}

// TestVMKeepBackendRefused: on a host that cannot launch SEV-SNP VMs, a VM
// keep of backend snp is refused at creation, saying why; the host info
// says the same.
func TestVMKeepBackendRefused(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Launcher = fakeVMLauncher(t) })
	sess, _ := delivery.NewSession()
	_, err := h.client.Create(context.Background(), &CreateRequest{Backend: "snp", Nonce: []byte("n"),
		Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: sess.KeyHash})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "backend snp is not available on this host: cannot launch SEV-SNP VM keeps: not an SEV-SNP host") {
		t.Fatalf("create: %v", err)
	}
	info, err := h.client.Host(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info.Backends["snp"], "cannot launch SEV-SNP VM keeps") || info.Backends["sim-snp"] != "available" {
		t.Errorf("host info backends %v", info.Backends)
	}
}
