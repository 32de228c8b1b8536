//go:build linux

// Package shim is containerd's runtime shim for Castellan,
// containerd-shim-castellan-v1 (runtime type io.containerd.castellan.v1):
// it serves containerd's task API (shim v2, over ttrpc) and runs each
// container's Wasm workload in a keep, started through internal/keep's
// Launcher exactly as the host agent and `castellan run` start theirs, and
// delivered to over the keep's confidential channel after its evidence is
// checked (internal/delivery). It is the castellan binary itself, run under
// the shim's name (argv[0]): a process keep is then this very binary's
// `castellan keep`, and a VM keep boots the keep image this binary made.
//
// containerd starts a shim binary three ways: `start` (print the address
// of a ttrpc socket served by a daemonised copy of the shim, then exit),
// `delete` (clean up after a shim that died) and the daemon itself. The
// bootstrap is the one every containerd from 1.6 on speaks: the address on
// standard output as text.
package shim

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// socketDir holds the shims' ttrpc sockets, as runc's shim keeps them.
var socketDir = "/run/containerd/s"

// flags are containerd's command line for a shim.
type flags struct {
	namespace, address, publishBinary, id, bundle string
	debug                                         bool
	action                                        string
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet(BinaryName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.namespace, "namespace", "", "containerd namespace")
	fs.StringVar(&f.address, "address", "", "containerd's gRPC socket")
	fs.StringVar(&f.publishBinary, "publish-binary", "", "containerd binary (events)")
	fs.StringVar(&f.id, "id", "", "the container's id")
	fs.StringVar(&f.bundle, "bundle", "", "the container's bundle")
	fs.BoolVar(&f.debug, "debug", false, "debug log")
	fs.Bool("v", false, "version")
	fs.String("socket", "", "unused")
	fs.String("debug-socket", "", "unused")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.Lookup("v").Value.String() == "true" {
		f.action = "version"
		return f, nil
	}
	f.action = fs.Arg(0)
	if f.bundle == "" {
		f.bundle, _ = os.Getwd()
	}
	if f.namespace == "" {
		return nil, errors.New("-namespace is empty")
	}
	if f.id == "" {
		return nil, errors.New("-id is empty")
	}
	return f, nil
}

// Main runs the shim with containerd's arguments (without argv[0]) and
// returns the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %v\n", BinaryName, err)
		return 2
	}
	switch f.action {
	case "version":
		fmt.Fprintf(stdout, "%s (castellan)\n", BinaryName)
		return 0
	case "start":
		err = start(f, stdout)
	case "delete":
		err = deleteAction(f, stdout)
	case "serve":
		err = serve(f)
	default:
		err = fmt.Errorf("action %q: want start or delete", f.action)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: error: %v\n", BinaryName, err)
		return 1
	}
	return 0
}

// groupID is the id whose shim serves a container: the pod's sandbox for
// the containers of a Kubernetes pod (one shim a pod, as runc's), else
// the container's own.
func groupID(f *flags) string {
	spec, err := readSpec(f.bundle)
	if err == nil && spec.Annotations != nil {
		if sb := spec.Annotations[annotationSandboxID]; sb != "" {
			return sb
		}
	}
	return f.id
}

func socketPath(f *flags, group string) string {
	sum := sha256.Sum256([]byte(f.address + "\x00" + f.namespace + "\x00" + group))
	return filepath.Join(socketDir, fmt.Sprintf("castellan-%x", sum[:12]))
}

// start makes the shim daemon (or finds the pod's) and prints its address.
func start(f *flags, stdout io.Writer) error {
	path := socketPath(f, groupID(f))
	addr := "unix://" + path
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		fmt.Fprint(stdout, addr)
		return writeAddress(f.bundle, addr)
	}
	if err := os.MkdirAll(socketDir, 0o711); err != nil {
		return err
	}
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("shim socket: %w", err)
	}
	// The daemon serves the socket from here on: closing this copy must
	// not remove it.
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		return err
	}
	defer lf.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"-namespace", f.namespace, "-address", f.address, "-publish-binary", f.publishBinary,
		"-id", f.id, "-bundle", f.bundle}
	if f.debug {
		args = append(args, "-debug")
	}
	cmd := exec.Command(exe, append(args, "serve")...)
	cmd.Args[0] = BinaryName
	cmd.Dir = f.bundle
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Env = os.Environ()
	// The daemon outlives this start command and containerd's own process
	// group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(path)
		return fmt.Errorf("starting the shim daemon: %w", err)
	}
	cmd.Process.Release()
	if err := writeAddress(f.bundle, addr); err != nil {
		return err
	}
	fmt.Fprint(stdout, addr)
	return nil
}

// writeAddress records the shim's address in the bundle, where containerd
// looks for it when it reconnects after a restart.
func writeAddress(bundle, addr string) error {
	tmp := filepath.Join(bundle, "address.tmp")
	if err := os.WriteFile(tmp, []byte(addr), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(bundle, "address"))
}

// serve is the shim daemon: the task service on the socket at descriptor
// 3, until containerd shuts it down.
func serve(f *flags) error {
	ln, err := net.FileListener(os.NewFile(3, "socket"))
	if err != nil {
		return fmt.Errorf("shim socket: %w", err)
	}
	logw := openLog(f.bundle)
	unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGINT)
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc := newService(ctx, f, logw, cancel)
	taskapi.RegisterTTRPCTaskService(srv, svc)
	tl := newTrackedListener(ln)
	go func() {
		<-ctx.Done()
		// Let the Shutdown reply go out first: containerd hangs up once
		// it has it (a client that does not is given a second).
		tl.waitClosed(time.Second)
		srv.Close()
	}()
	err = srv.Serve(ctx, tl)
	svc.close()
	if ctx.Err() != nil || errors.Is(err, ttrpc.ErrServerClosed) {
		if p, ok := ln.Addr().(*net.UnixAddr); ok {
			os.Remove(p.Name)
		}
		return nil
	}
	return err
}

// openLog opens the log FIFO containerd made in the bundle; the shim's
// log lines go there (containerd copies them into its own log).
func openLog(bundle string) io.Writer {
	f, err := openFifoWrite(context.Background(), filepath.Join(bundle, "log"))
	if err != nil {
		return io.Discard
	}
	return f
}

// deleteAction cleans up after a shim that died: it kills the keep the
// bundle records, unmounts the rootfs and answers containerd with the
// container's end.
func deleteAction(f *flags, stdout io.Writer) error {
	cleanupBundle(f.bundle)
	b, err := proto.Marshal(&taskapi.DeleteResponse{
		ExitStatus: 128 + uint32(syscall.SIGKILL),
		ExitedAt:   timestamppb.Now(),
	})
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

// trackedListener counts the connections it accepted that are still open,
// so that the daemon can end as soon as its clients hung up rather than
// after a fixed pause.
type trackedListener struct {
	net.Listener
	mu      sync.Mutex
	open    int
	changed chan struct{} // closed (and replaced) when a connection closes
}

func newTrackedListener(ln net.Listener) *trackedListener {
	return &trackedListener{Listener: ln, changed: make(chan struct{})}
}

func (l *trackedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.mu.Unlock()
	return &trackedConn{Conn: c, l: l}, nil
}

// waitClosed returns once no accepted connection is open, or after d.
func (l *trackedListener) waitClosed(d time.Duration) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		n, ch := l.open, l.changed
		l.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			return
		}
	}
}

type trackedConn struct {
	net.Conn
	l    *trackedListener
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		close(c.l.changed)
		c.l.changed = make(chan struct{})
		c.l.mu.Unlock()
	})
	return err
}
