//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu/qemutest"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/keeplog"
)

func TestFindVirtiofsd(t *testing.T) {
	withFiles := func(outputs map[string]string, files ...string) *qemutest.Host {
		h := qemutest.ThisMachine()
		for _, f := range files {
			h.Files[f] = ""
		}
		for k, v := range outputs {
			h.Outputs[k] = v
		}
		return h
	}
	utilLinux := map[string]string{"unshare": "/usr/bin/unshare", "mount": "/usr/bin/mount"}
	withPrograms := func(h *qemutest.Host, programs map[string]string) *qemutest.Host {
		h.Programs = programs
		return h
	}
	for _, tc := range []struct {
		name string
		host *qemutest.Host
		path string
		want *Virtiofsd
		err  string
	}{
		{"debian 12", withFiles(map[string]string{"--help": qemutest.VirtiofsdCHelp}, "/usr/lib/qemu/virtiofsd"), "",
			&Virtiofsd{Path: "/usr/lib/qemu/virtiofsd"}, ""},
		{"rust first", withFiles(map[string]string{"--help": qemutest.VirtiofsdRustHelp}, "/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"), "",
			&Virtiofsd{Path: "/usr/libexec/virtiofsd", Rust: true}, ""},
		{"rust with --readonly", withFiles(map[string]string{"--help": qemutest.VirtiofsdRustROHelp}, "/usr/libexec/virtiofsd"), "",
			&Virtiofsd{Path: "/usr/libexec/virtiofsd", Rust: true, ReadOnly: true}, ""},
		{"debian 12 with util-linux", withPrograms(withFiles(map[string]string{"--help": qemutest.VirtiofsdCHelp}, "/usr/lib/qemu/virtiofsd"), utilLinux),
			"", &Virtiofsd{Path: "/usr/lib/qemu/virtiofsd", Unshare: "/usr/bin/unshare", Mount: "/usr/bin/mount"}, ""},
		{"rust with --readonly needs no util-linux", withPrograms(withFiles(map[string]string{"--help": qemutest.VirtiofsdRustROHelp}, "/usr/libexec/virtiofsd"), utilLinux),
			"", &Virtiofsd{Path: "/usr/libexec/virtiofsd", Rust: true, ReadOnly: true}, ""},
		{"unshare without mount", withPrograms(withFiles(map[string]string{"--help": qemutest.VirtiofsdCHelp}, "/usr/lib/qemu/virtiofsd"), map[string]string{"unshare": "/usr/bin/unshare"}),
			"", &Virtiofsd{Path: "/usr/lib/qemu/virtiofsd"}, ""},
		{"on PATH", withPrograms(withFiles(map[string]string{"--help": qemutest.VirtiofsdRustHelp}), map[string]string{"virtiofsd": "/opt/bin/virtiofsd"}),
			"", &Virtiofsd{Path: "/opt/bin/virtiofsd", Rust: true}, ""},
		{"given", withFiles(map[string]string{"--help": qemutest.VirtiofsdCHelp}, "/usr/libexec/virtiofsd"), "/srv/virtiofsd",
			&Virtiofsd{Path: "/srv/virtiofsd"}, ""},
		{"none", withFiles(nil), "", nil, "virtiofsd is not installed (Debian 12: apt-get install qemu-system-common"},
		{"not a virtiofsd", withFiles(map[string]string{"--help": "usage: cat [FILE]"}, "/usr/libexec/virtiofsd"), "", nil,
			"/usr/libexec/virtiofsd --help: neither --shared-dir nor -o source= in its options"},
		{"help fails", withFiles(nil, "/usr/libexec/virtiofsd"), "", nil, "/usr/libexec/virtiofsd --help: exit status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := FindVirtiofsd(tc.host, tc.path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(d, tc.want) {
				t.Fatalf("%+v %v, want %+v", d, err, tc.want)
			}
		})
	}
}

func TestVirtiofsdArgs(t *testing.T) {
	c, rust, rustRO := &Virtiofsd{Path: "c"}, &Virtiofsd{Path: "r", Rust: true}, &Virtiofsd{Path: "r", Rust: true, ReadOnly: true}
	// With util-linux, a daemon that cannot refuse writes serves a
	// read-only volume from its own read-only bind.
	cu := &Virtiofsd{Path: "c", Unshare: "/usr/bin/unshare", Mount: "/usr/bin/mount"}
	const cArgs = "--fd=3 -o source=/srv/vol -o cache=none -o sandbox=namespace -o modcaps=-mknod:-setfcap -o log_level=warn"
	const rustArgs = "--fd=3 --shared-dir=/srv/vol --cache=never --sandbox=namespace --modcaps=-mknod:-setfcap --log-level=warn"
	for _, tc := range []struct {
		name string
		d    *Virtiofsd
		ro   bool
		want string // the command line
	}{
		{"c", c, false, "c " + cArgs},
		{"c read-only (guest only)", c, true, "c " + cArgs},
		{"c with util-linux", cu, false, "c " + cArgs},
		{"c with util-linux, read-only", cu, true, "/usr/bin/unshare --mount --propagation private /bin/sh -c " + roScript + " sh /usr/bin/mount /srv/vol c " + cArgs},
		{"rust", rust, false, "r " + rustArgs},
		{"rust read-only without --readonly", rust, true, "r " + rustArgs},
		{"rust read-only", rustRO, true, "r " + rustArgs + " --readonly"},
	} {
		prog, args, err := tc.d.Command("/srv/vol", tc.ro)
		if got := strings.Join(append([]string{prog}, args...), " "); err != nil || got != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.name, got, err, tc.want)
		}
	}
	for _, dir := range []string{"/srv/a,b", "srv/vol"} {
		if _, _, err := cu.Command(dir, true); err == nil || !strings.Contains(err.Error(), "volume folder") {
			t.Errorf("folder %q: %v", dir, err)
		}
	}
}

// fuseOptUnescape undoes libfuse's escapes in one -o option, as its
// option parser does (fuse_opt.c, process_real_option_group, in QEMU's
// tools/virtiofsd): a backslash takes the next character as it is, or
// three octal digits as one byte.
func fuseOptUnescape(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		i++
		if i+2 < len(s) && s[i] >= '0' && s[i] <= '3' && s[i+1] >= '0' && s[i+1] <= '7' && s[i+2] >= '0' && s[i+2] <= '7' {
			b = append(b, (s[i]-'0')*0o100+(s[i+1]-'0')*0o10+(s[i+2]-'0'))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

// TestVirtiofsdArgsEscapes: the C daemon unescapes its -o options, so a
// folder whose name holds backslashes must reach it escaped, or it serves
// another folder: /srv/allowed/\056\056/etc (a clean path, below
// /srv/allowed) would be /srv/etc.
func TestVirtiofsdArgsEscapes(t *testing.T) {
	c := &Virtiofsd{Path: "c"}
	for _, dir := range []string{`/srv/allowed/\056\056/etc`, `/srv/pod\061`, `/srv/a\b`, `/srv/ends\`, `/srv/\\`} {
		args, err := c.Args(dir, false)
		if err != nil {
			t.Errorf("%q: %v", dir, err)
			continue
		}
		if len(args) < 3 || args[1] != "-o" || fuseOptUnescape(args[2]) != "source="+dir {
			t.Errorf("%q: %q: the daemon reads %q", dir, args, fuseOptUnescape(args[2]))
		}
	}
	// The real C daemon, when this host has it: a folder named x\061 that
	// does not exist beside an x1 that does is not found (the daemon
	// would serve x1).
	const cDaemon = "/usr/lib/qemu/virtiofsd"
	if _, err := os.Stat(cDaemon); err != nil || os.Geteuid() != 0 {
		return
	}
	base := t.TempDir()
	os.Mkdir(filepath.Join(base, "x1"), 0o755)
	dir := filepath.Join(base, `x\061`)
	args, err := c.Args(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(base, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(cDaemon, args...)
	cmd.ExtraFiles = []*os.File{f}
	var out strings.Builder
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(out.String(), "failed to stat source") || !strings.Contains(out.String(), `x\061`) {
			t.Errorf("%s %q: %v, %s; want it to fail to find the folder", cDaemon, args, err, out.String())
		}
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Errorf("%s %q still runs after 2 minutes: it serves another folder than %s", cDaemon, args, dir)
	}
}

// fakeVM is a VM launcher whose QEMU and virtiofsd are shell scripts:
// QEMU runs qemuBody; each daemon records its pid and runs daemonBody.
type fakeVM struct {
	*VM
	pids string // the daemons' pids, one a line
}

func newFakeVM(t *testing.T, qemuBody, daemonBody string) *fakeVM {
	t.Helper()
	bin := t.TempDir()
	pids := filepath.Join(bin, "pids")
	qemu := filepath.Join(bin, "qemu")
	os.WriteFile(qemu, []byte("#!/bin/sh\n"+qemuBody+"\n"), 0o755)
	fsd := filepath.Join(bin, "virtiofsd")
	os.WriteFile(fsd, []byte("#!/bin/sh\necho $$ >> "+pids+"\necho \"fake virtiofsd $*\" >&2\n"+daemonBody+"\n"), 0o755)
	h := qemutest.ThisMachine()
	h.Path = qemu
	h.Outputs["--help"] = qemutest.VirtiofsdCHelp
	v := &VM{Image: fakeImage(t), Host: h, Virtiofsd: fsd}
	if err := v.Provision(); err != nil {
		t.Fatal(err)
	}
	return &fakeVM{VM: v, pids: pids}
}

// spec is a keep with a read-only and a read-write volume.
func (f *fakeVM) spec(t *testing.T) keep.Spec {
	base := t.TempDir()
	ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "rw")
	os.Mkdir(ro, 0o755)
	os.Mkdir(rw, 0o755)
	// A short folder: the sockets' paths must fit sun_path.
	dir, err := os.MkdirTemp("", "vfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return keep.Spec{ID: "k1", Dir: dir, Backend: "nil", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64),
		ClientKey: make([]byte, 32), AttachTimeout: time.Second,
		Volumes: []keep.Volume{{Guest: "/config", Host: ro, ReadOnly: true}, {Guest: "/data", Host: rw}}}
}

// daemons waits for n daemons to have started and returns their pids.
func (f *fakeVM) daemons(t *testing.T, n int) []int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		b, _ := os.ReadFile(f.pids)
		if fields := strings.Fields(string(b)); len(fields) >= n {
			var pids []int
			for _, s := range fields {
				p, _ := strconv.Atoi(s)
				pids = append(pids, p)
			}
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemons did not start: %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// gone checks that no process of pids is left, not even a zombie.
func gone(t *testing.T, what string, pids ...int) {
	t.Helper()
	for _, p := range pids {
		if err := syscall.Kill(p, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("%s %d is left behind (%v)", what, p, err)
		}
	}
}

// pgid reads a process's group from /proc/PID/stat.
func pgid(t *testing.T, pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)[strings.LastIndexByte(string(b), ')')+1:])
	g, _ := strconv.Atoi(f[2])
	return g
}

// TestVolumeDaemons: a keep with volumes starts one virtiofsd per volume
// in QEMU's process group, on a socket that listens before QEMU starts,
// and tells the guest tags and guest paths only. No daemon is left
// behind however the VM ends.
func TestVolumeDaemons(t *testing.T) {
	t.Run("killed", func(t *testing.T) {
		f := newFakeVM(t, "exec sleep 600", "exec sleep 600")
		s := f.spec(t)
		inst, err := f.Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		pids := f.daemons(t, 2)
		for _, p := range pids {
			if g := pgid(t, p); g != inst.PID() {
				t.Errorf("daemon %d in process group %d, want QEMU's %d", p, g, inst.PID())
			}
		}
		for i := 0; i < 2; i++ {
			if _, err := os.Stat(volumeSocket(s.Dir, i)); err != nil {
				t.Errorf("socket of volume %d: %v", i, err)
			}
		}
		req := inst.(*vmInstance).req
		want := []vmproto.Volume{{Tag: "vol0", Guest: "/config", ReadOnly: true}, {Tag: "vol1", Guest: "/data"}}
		if !reflect.DeepEqual(req.Volumes, want) {
			t.Errorf("launch request volumes %+v, want %+v", req.Volumes, want)
		}
		// The agent's and the shim's stop: one group kill.
		if err := keep.KillGroup(inst.PID(), inst.StartTicks()); err != nil {
			t.Fatal(err)
		}
		inst.Wait()
		gone(t, "daemon", pids...)
		gone(t, "QEMU", inst.PID())
		f.Cleanup(s.ID, s.Dir)
		if socks, _ := filepath.Glob(filepath.Join(s.Dir, "*.sock")); len(socks) != 0 {
			t.Errorf("sockets left: %v", socks)
		}
		log, _ := os.ReadFile(keeplog.Path(s.Dir))
		for _, want := range []string{
			"virtiofsd /config: fake virtiofsd --fd=3 -o source=" + s.Volumes[0].Host + " -o cache=none -o sandbox=namespace",
			"vm: volume /config is read-only in the guest only: " + f.Virtiofsd + " cannot refuse writes itself, and unshare or mount (util-linux) is missing",
		} {
			if !strings.Contains(string(log), want) {
				t.Errorf("the keep's log lacks %q:\n%s", want, log)
			}
		}
	})
	for _, end := range []struct{ name, qemu string }{
		{"QEMU crashes", "sleep 1; kill -SEGV $$"},
		{"the VM powers off", "sleep 1; exit 0"},
	} {
		t.Run(end.name, func(t *testing.T) {
			f := newFakeVM(t, end.qemu, "exec sleep 600")
			inst, err := f.Start(context.Background(), f.spec(t))
			if err != nil {
				t.Fatal(err)
			}
			pids := f.daemons(t, 2)
			inst.Wait()
			gone(t, "daemon", pids...)
		})
	}
	t.Run("a daemon ends first", func(t *testing.T) {
		// Without its daemon a volume hangs the guest: the VM is stopped.
		f := newFakeVM(t, "exec sleep 600", "exit 3")
		s := f.spec(t)
		inst, err := f.Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan *os.ProcessState)
		go func() { done <- inst.Wait() }()
		select {
		case st := <-done:
			if st.Success() {
				t.Errorf("QEMU ended with %v", st)
			}
		case <-time.After(2 * time.Minute):
			keep.KillGroup(inst.PID(), inst.StartTicks())
			t.Fatal("the VM runs on without its volumes' daemons")
		}
		log, _ := os.ReadFile(keeplog.Path(s.Dir))
		if !strings.Contains(string(log), "ended while the VM ran: stopping the VM") {
			t.Errorf("the keep's log does not say why the VM stopped:\n%s", log)
		}
	})
	t.Run("a daemon fails to start", func(t *testing.T) {
		// QEMU's shell stays (no exec), to be found by its script's path.
		f := newFakeVM(t, "sleep 600", "exec sleep 600")
		f.Virtiofsd = filepath.Join(t.TempDir(), "missing") // --help is the fake host's
		s := f.spec(t)
		inst, err := f.Start(context.Background(), s)
		if err == nil || !strings.Contains(err.Error(), "volume /config: starting "+f.Virtiofsd) {
			t.Fatalf("start: %v %v, want the daemon's failure", inst, err)
		}
		// QEMU was started and is gone again, with the sockets.
		if socks, _ := filepath.Glob(filepath.Join(s.Dir, "*.sock")); len(socks) != 0 {
			t.Errorf("sockets left: %v", socks)
		}
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), f.Host.(*qemutest.Host).Path) {
				t.Errorf("QEMU is left behind: %s %q", filepath.Dir(p), b)
			}
		}
	})
	t.Run("none installed", func(t *testing.T) {
		f := newFakeVM(t, "exec sleep 600", "exec sleep 600")
		f.Virtiofsd = ""
		delete(f.Host.(*qemutest.Host).Outputs, "--help")
		s := f.spec(t)
		_, err := f.Start(context.Background(), s)
		if err == nil || !strings.Contains(err.Error(), "vm keeps: the keep has 2 volumes: virtiofsd is not installed") {
			t.Fatalf("start: %v", err)
		}
		// A keep without volumes needs none.
		s.Volumes = nil
		inst, err := f.Start(context.Background(), s)
		if err != nil {
			t.Fatal(err)
		}
		keep.KillGroup(inst.PID(), inst.StartTicks())
		inst.Wait()
	})
}

// TestVirtiofsdSandbox runs this host's real virtiofsd on a volume, as a
// keep's: once QEMU's side connects, the daemon serves from a sandbox
// whose root is the volume. Paths the guest could ask for that lead out
// of the volume ("..", a relative link up, the absolute path of a host
// file) resolve inside it, as the daemon sees its files.
func TestVirtiofsdSandbox(t *testing.T) {
	d := realVirtiofsd(t)
	base := t.TempDir()
	vol := filepath.Join(base, "vol")
	os.Mkdir(vol, 0o755)
	os.WriteFile(filepath.Join(vol, "marker"), []byte("in the volume\n"), 0o644)
	secret := filepath.Join(base, "secret")
	os.WriteFile(secret, []byte("the host's\n"), 0o600)
	os.Symlink("../secret", filepath.Join(vol, "up"))
	root, served := serveVolume(t, d, keep.Volume{Guest: "/data", Host: vol})
	for _, p := range []string{"/up", "/../secret", "/../../../../.." + secret, secret, "/etc/passwd"} {
		if b, err := os.ReadFile(root + p); err == nil {
			t.Errorf("the daemon reaches %s outside its volume: %q", p, b)
		}
	}
	// The daemon cannot make device nodes in the host's folder for a guest
	// that asks (CAP_MKNOD), nor set file capabilities (CAP_SETFCAP). The
	// daemon drops its capabilities once QEMU's side has connected.
	const capMknod, capSetfcap = 27, 31
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(10 * time.Millisecond) {
		caps, err := capsOf(served)
		if err != nil {
			t.Fatal(err)
		}
		if caps&(1<<capMknod|1<<capSetfcap) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon keeps CAP_MKNOD or CAP_SETFCAP: effective and permitted %#x", caps)
		}
	}
}

// TestVirtiofsdReadOnlyView: the daemon of a read-only volume cannot
// write to its folder, whatever a guest asks: the Rust daemon's
// --readonly, or (the C daemon) a read-only bind of the folder in a mount
// namespace of its own. A read-write volume stays writable.
func TestVirtiofsdReadOnlyView(t *testing.T) {
	d := realVirtiofsd(t)
	if !d.ReadOnly && d.Unshare == "" {
		t.Skip("neither virtiofsd --readonly nor unshare and mount (util-linux) on this host")
	}
	base := t.TempDir()
	ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "rw")
	for _, dir := range []string{ro, rw} {
		os.Mkdir(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "marker"), []byte("in the volume\n"), 0o644)
	}
	root, _ := serveVolume(t, d, keep.Volume{Guest: "/config", Host: ro, ReadOnly: true})
	if d.Unshare != "" && !d.ReadOnly {
		// The daemon's own view: what it opens for the guest.
		if err := os.WriteFile(root+"/new", []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("writing in the daemon's view of a read-only volume: %v, want EROFS", err)
		}
		if err := os.WriteFile(root+"/marker", []byte("changed"), 0o644); !errors.Is(err, syscall.EROFS) {
			t.Errorf("changing a file in the daemon's view of a read-only volume: %v, want EROFS", err)
		}
	}
	if ents, _ := os.ReadDir(ro); len(ents) != 1 {
		t.Errorf("the read-only volume changed: %v", ents)
	}
	// The read-only bind is the daemon's alone: the host's folder is
	// writable as before, and a read-write volume's daemon writes.
	if err := os.WriteFile(filepath.Join(ro, "host"), nil, 0o644); err != nil {
		t.Errorf("the host's folder became read-only: %v", err)
	}
	root, _ = serveVolume(t, d, keep.Volume{Guest: "/data", Host: rw})
	if err := os.WriteFile(root+"/new", []byte("x"), 0o644); err != nil {
		t.Errorf("writing in the daemon's view of a read-write volume: %v", err)
	}
}

// realVirtiofsd is this host's virtiofsd, or the test is skipped.
func realVirtiofsd(t *testing.T) *Virtiofsd {
	t.Helper()
	d, err := FindVirtiofsd(OS{}, "")
	if err != nil {
		t.Skipf("no virtiofsd: %v (scripts/test installs qemu-system-common)", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("virtiofsd's namespace sandbox needs root")
	}
	return d
}

// serveVolume starts the real daemon d on volume v, as a keep's, connects
// to it as QEMU would, and returns the root of the process that serves
// the guest (/proc/PID/root: the daemon's view of its files) and that
// PID. The daemon is stopped at the test's end.
func serveVolume(t *testing.T, d *Virtiofsd, v keep.Volume) (root, served string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "vfs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// QEMU's stand-in leads the process group the daemon joins.
	leader := exec.Command("sleep", "600")
	leader.SysProcAttr = keep.ProcAttr()
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	var logMu sync.Mutex
	var log []string
	vd, err := listenVolumes(d, dir, []keep.Volume{v})
	if err != nil {
		t.Fatal(err)
	}
	vd.waited = make(chan struct{})
	vd.logf = func(s string) { logMu.Lock(); log = append(log, s); logMu.Unlock() }
	if err := vd.start(leader.Process.Pid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-leader.Process.Pid, syscall.SIGKILL)
		leader.Wait()
		vd.stop()
		gone(t, "virtiofsd", vd.cmds[0].Process.Pid)
		logMu.Lock()
		t.Logf("daemon's log: %q", log)
		logMu.Unlock()
	})
	conn, err := net.Dial("unix", volumeSocket(dir, 0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	// The process that serves the guest: the daemon itself, or its child
	// in the new pid namespace; its root becomes the volume.
	pid := vd.cmds[0].Process.Pid
	for deadline := time.Now().Add(2 * time.Minute); root == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			logMu.Lock()
			defer logMu.Unlock()
			t.Fatalf("the daemon did not sandbox itself into the volume; its log: %q", log)
		}
		cands := []string{strconv.Itoa(pid)}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
			cands = append(cands, strings.Fields(string(b))...)
		}
		for _, c := range cands {
			if b, err := os.ReadFile("/proc/" + c + "/root/marker"); err == nil && string(b) == "in the volume\n" {
				root, served = "/proc/"+c+"/root", c
			}
		}
	}
	if g := pgid(t, pid); g != leader.Process.Pid {
		t.Errorf("daemon in process group %d, want %d", g, leader.Process.Pid)
	}
	return root, served
}

// capsOf is the union of the effective and permitted capabilities of
// process pid.
func capsOf(pid string) (uint64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, err
	}
	var caps uint64
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		if k == "CapEff" || k == "CapPrm" {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%s/status: %s: %w", pid, line, err)
			}
			caps |= n
		}
	}
	return caps, nil
}
