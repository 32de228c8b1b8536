package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
)

// A VM keep's volumes reach its guest through virtio-fs: for each volume
// the launcher runs a virtiofsd serving the volume's host folder on a
// vhost-user socket in the keep's folder, and QEMU gives the guest a
// vhost-user-fs-pci device on that socket. The daemon runs sandboxed
// (its own mount, pid and net namespaces, pivot_root into the folder), so
// that nothing the guest asks for (a "..", a link) reaches outside the
// volume, with cache=none (the host may change the folder under the
// guest).
//
// The daemons lead no process group of their own: they join QEMU's, so
// that the one group kill that stops a keep (keep.KillGroup, by the agent,
// the shim or a restarted agent) ends them too. The launcher makes each
// socket and listens on it before QEMU starts, so QEMU finds it at once,
// then starts the daemons in QEMU's group on those listening sockets
// (--fd): QEMU waits for the daemon's first answer while it sets up the
// device.

// DefaultVirtiofsdPaths are where distributions install virtiofsd: the
// virtio-fs project's Rust daemon (Debian 13, Fedora: package virtiofsd)
// and QEMU's C daemon (Debian 12: package qemu-system-common, QEMU 7.2 and
// older). The first found is used; then virtiofsd on PATH.
var DefaultVirtiofsdPaths = []string{"/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"}

// Virtiofsd is the virtio-fs daemon found on this host.
type Virtiofsd struct {
	Path string
	// Rust is the Rust daemon (--shared-dir, --cache never); else QEMU's
	// C one (-o source=..., -o cache=none).
	Rust bool
	// ReadOnly: the daemon itself refuses writes to a read-only volume
	// (the Rust daemon's --readonly, in its newer releases). QEMU's C
	// daemon cannot: a read-only volume is then read-only in the guest
	// only (the guest mounts it so), unless Unshare is set.
	ReadOnly bool
	// Unshare and Mount are util-linux's unshare(1) and mount(8), when
	// this host has them. A daemon without ReadOnly then serves a
	// read-only volume from a mount namespace of its own in which the
	// folder is bound read-only onto itself: the daemon cannot write
	// there, whatever a guest asks.
	Unshare, Mount string
}

// errNoVirtiofsd names what to install.
var errNoVirtiofsd = errors.New("virtiofsd is not installed (Debian 12: apt-get install qemu-system-common, for /usr/lib/qemu/virtiofsd; newer: apt-get install virtiofsd)")

// FindVirtiofsd finds the daemon at path (or, if path is "", at
// DefaultVirtiofsdPaths then on PATH) and reads from its --help which
// flavour it is.
func FindVirtiofsd(h Host, path string) (*Virtiofsd, error) {
	if path == "" {
		for _, p := range DefaultVirtiofsdPaths {
			if _, err := h.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		p, err := h.LookPath("virtiofsd")
		if err != nil {
			return nil, errNoVirtiofsd
		}
		path = p
	}
	out, err := h.Output(path, "--help")
	if err != nil {
		return nil, fmt.Errorf("%s --help: %w", path, err)
	}
	help := string(out)
	d := &Virtiofsd{Path: path}
	switch {
	case strings.Contains(help, "--shared-dir"):
		d.Rust = true
		d.ReadOnly = strings.Contains(help, "--readonly")
	case strings.Contains(help, "source="):
	default:
		return nil, fmt.Errorf("%s --help: neither --shared-dir nor -o source= in its options: not a virtiofsd", path)
	}
	if !d.ReadOnly {
		u, err1 := h.LookPath("unshare")
		m, err2 := h.LookPath("mount")
		if err1 == nil && err2 == nil {
			d.Unshare, d.Mount = u, m
		}
	}
	return d, nil
}

// roScript, run by /bin/sh in the daemon's new mount namespace, binds
// the folder $2 read-only onto itself with mount(8) $1, then becomes the
// daemon (the arguments after them). A mount that fails ends it there: the
// daemon never serves the folder writable.
const roScript = `m=$1 d=$2; shift 2; "$m" -n --bind -o ro "$d" "$d" && exec "$@"`

// Command returns the program and its arguments that serve dir on the
// listening socket of descriptor 3: the daemon itself, or, for a
// read-only volume the daemon cannot refuse writes to, unshare(1) and a
// shell that make its read-only view of dir first (same process: the
// daemon keeps its pid and process group).
func (d *Virtiofsd) Command(dir string, readOnly bool) (string, []string, error) {
	args, err := d.Args(dir, readOnly)
	if err != nil {
		return "", nil, err
	}
	if !readOnly || d.ReadOnly || d.Unshare == "" {
		return d.Path, args, nil
	}
	return d.Unshare, append([]string{"--mount", "--propagation", "private", "/bin/sh", "-c", roScript, "sh", d.Mount, dir, d.Path}, args...), nil
}

// listenFD is the daemon's descriptor of its listening socket.
const listenFD = 3

// Args returns the daemon's arguments to serve dir on the listening
// socket it gets as descriptor 3.
func (d *Virtiofsd) Args(dir string, readOnly bool) ([]string, error) {
	if !filepath.IsAbs(dir) || strings.ContainsAny(dir, ",\x00") {
		// The C daemon's -o options split on commas.
		return nil, fmt.Errorf("volume folder %q: not an absolute path, or it holds a comma, which virtiofsd's options cannot take", dir)
	}
	fd := "--fd=" + strconv.Itoa(listenFD)
	if d.Rust {
		args := []string{fd, "--shared-dir=" + dir, "--cache=never", "--sandbox=namespace", "--modcaps=" + dropCaps, "--log-level=warn"}
		if readOnly && d.ReadOnly {
			args = append(args, "--readonly")
		}
		return args, nil
	}
	// libfuse's option parser, which the C daemon's -o goes through, takes
	// a backslash as an escape (\056\056 is ".."): a folder's own
	// backslashes are escaped, so that the daemon serves that folder and
	// no other.
	src := strings.ReplaceAll(dir, `\`, `\\`)
	return []string{fd, "-o", "source=" + src, "-o", "cache=none", "-o", "sandbox=namespace", "-o", "modcaps=" + dropCaps, "-o", "log_level=warn"}, nil
}

// dropCaps are the capabilities the daemon (root) drops from those it
// keeps to serve a guest: a guest that asks cannot make device nodes in
// the host's folder (a disk's, for whoever on the host opens it) nor give
// its files capabilities. The keep's workload (WASI) does neither.
const dropCaps = "-mknod:-setfcap"

// VolumeTag is the virtio-fs tag of the keep's i-th volume.
func VolumeTag(i int) string { return "vol" + strconv.Itoa(i) }

// volumeSocket is the vhost-user socket of the i-th volume, in the keep's
// folder.
func volumeSocket(dir string, i int) string {
	return filepath.Join(dir, "volume"+strconv.Itoa(i)+".sock")
}

// volumeDaemons are one keep's virtiofsd processes.
type volumeDaemons struct {
	d      *Virtiofsd
	vols   []keep.Volume
	dir    string
	lns    []*net.UnixListener // until the daemons have them
	logf   func(string)
	waited <-chan struct{} // QEMU ended

	mu      sync.Mutex
	pgid    int // QEMU's process group, once the daemons run in it
	stopped bool
	cmds    []*exec.Cmd
	logDone []chan struct{} // a daemon's standard error reached its end
}

// volumeFS returns the VM's virtio-fs devices of n volumes.
func volumeFS(dir string, n int) []FS {
	var fs []FS
	for i := 0; i < n; i++ {
		fs = append(fs, FS{Tag: VolumeTag(i), Socket: volumeSocket(dir, i)})
	}
	return fs
}

// listenVolumes makes each volume's socket and listens on it.
func listenVolumes(d *Virtiofsd, dir string, vols []keep.Volume) (*volumeDaemons, error) {
	vd := &volumeDaemons{d: d, vols: vols, dir: dir}
	for i := range vols {
		sock := volumeSocket(dir, i)
		os.Remove(sock)
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			vd.closeListeners()
			vd.removeSockets()
			return nil, fmt.Errorf("volume %s: %w", vols[i].Guest, err)
		}
		// The socket file stays until the keep's cleanup: QEMU may connect
		// after the launcher has given its listener to the daemon.
		ln.SetUnlinkOnClose(false)
		os.Chmod(sock, 0o600)
		vd.lns = append(vd.lns, ln)
	}
	return vd, nil
}

func (vd *volumeDaemons) closeListeners() {
	for _, ln := range vd.lns {
		ln.Close()
	}
	vd.lns = nil
}

func (vd *volumeDaemons) removeSockets() {
	for i := range vd.vols {
		os.Remove(volumeSocket(vd.dir, i))
	}
}

// start starts one daemon per volume in QEMU's process group (pgid), on
// the listening sockets. On an error the caller kills the group and calls
// stop.
func (vd *volumeDaemons) start(pgid int) error {
	defer vd.closeListeners()
	vd.mu.Lock()
	defer vd.mu.Unlock()
	vd.pgid = pgid
	for i, v := range vd.vols {
		if v.ReadOnly && !vd.d.ReadOnly && vd.d.Unshare == "" {
			vd.logf(fmt.Sprintf("vm: volume %s is read-only in the guest only: %s cannot refuse writes itself, and unshare or mount (util-linux) is missing", v.Guest, vd.d.Path))
		}
		prog, args, err := vd.d.Command(v.Host, v.ReadOnly)
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Guest, err)
		}
		f, err := vd.lns[i].File()
		if err != nil {
			return fmt.Errorf("volume %s: %w", v.Guest, err)
		}
		cmd := exec.Command(prog, args...)
		cmd.Dir = "/"
		cmd.ExtraFiles = []*os.File{f}
		cmd.SysProcAttr = inGroup(pgid)
		stderr, err := cmd.StderrPipe()
		if err == nil {
			err = cmd.Start()
		}
		f.Close()
		if err != nil {
			return fmt.Errorf("volume %s: starting %s: %w", v.Guest, vd.d.Path, err)
		}
		done := make(chan struct{})
		vd.cmds = append(vd.cmds, cmd)
		vd.logDone = append(vd.logDone, done)
		go vd.watch(v.Guest, stderr, done)
	}
	return nil
}

// watch copies a daemon's standard error to the keep's log; at its end
// (the daemon ended) it stops the VM unless QEMU ends by itself within a
// moment: without its daemon a volume hangs the guest's file operations.
func (vd *volumeDaemons) watch(guest string, stderr interface{ Read([]byte) (int, error) }, done chan struct{}) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 4096), keep.MaxLogLine)
	for sc.Scan() {
		vd.logf("virtiofsd " + guest + ": " + sc.Text())
	}
	close(done)
	select {
	case <-vd.waited:
		return
	case <-time.After(2 * time.Second):
	}
	vd.mu.Lock()
	defer vd.mu.Unlock()
	if vd.stopped {
		return
	}
	vd.logf("vm: the virtiofsd of volume " + guest + " ended while the VM ran: stopping the VM")
	// The daemon is not reaped yet (stop reaps it), so the group still
	// exists and its id is not reused.
	killGroup(vd.pgid)
}

// stop ends the daemons once QEMU ended (or failed to start): it kills
// QEMU's process group (the daemons and their sandboxed children), reaps
// the daemons and removes the sockets. The group id is safe to use: the
// daemons, alive or not yet reaped, hold it.
func (vd *volumeDaemons) stop() {
	vd.mu.Lock()
	if vd.stopped {
		vd.mu.Unlock()
		return
	}
	vd.stopped = true
	if len(vd.cmds) > 0 {
		killGroup(vd.pgid)
	}
	vd.mu.Unlock()
	vd.closeListeners()
	for i, cmd := range vd.cmds {
		// The last log lines, unless something the daemon started holds
		// its standard error past the kill (Wait closes the pipe).
		select {
		case <-vd.logDone[i]:
		case <-time.After(5 * time.Second):
		}
		cmd.Wait()
	}
	vd.removeSockets()
}

// virtiofsd finds the daemon once, when the first keep with volumes
// starts: keeps without volumes do not need one.
func (v *VM) virtiofsd() (*Virtiofsd, error) {
	v.fsdOnce.Do(func() {
		v.fsd, v.fsdErr = FindVirtiofsd(v.Host, v.Virtiofsd)
	})
	return v.fsd, v.fsdErr
}

// volumesOf returns the launch request's view of s's volumes: tags and
// guest paths, never the host's folders.
func volumesOf(s keep.Spec) []vmproto.Volume {
	var vs []vmproto.Volume
	for i, v := range s.Volumes {
		vs = append(vs, vmproto.Volume{Tag: VolumeTag(i), Guest: v.Guest, ReadOnly: v.ReadOnly})
	}
	return vs
}
