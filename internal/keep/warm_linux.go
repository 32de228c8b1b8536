//go:build linux

package keep

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// warmProc is a keep process started ahead of its keep: the Go runtime and
// the castellan binary are up, and it waits on its control socket
// (descriptor HelloFD) for its keep.
type warmProc struct {
	cmd   *exec.Cmd
	ticks uint64
	ctl   *os.File // the launcher's end of the control socket
}

// startWarm starts a keep process ahead: `KEEP-COMMAND --warm`, in a
// process group of its own, with no output until it gets its keep.
func (p *Process) startWarm() (*warmProc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "keep control")
	theirs := os.NewFile(uintptr(fds[1]), "keep control")
	defer theirs.Close()
	cmd := exec.Command(p.Command[0], append(append([]string(nil), p.Command[1:]...), WarmFlag)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = ProcAttr()
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		ours.Close()
		return nil, fmt.Errorf("starting a keep process ahead: %w", err)
	}
	ticks, _ := StartTicks(cmd.Process.Pid)
	return &warmProc{cmd: cmd, ticks: ticks, ctl: ours}, nil
}

// assign gives a warm process its keep: it joins the keep's cgroup (if it
// has one), then gets its flags, its output file and its hello pipe.
func (w *warmProc) assign(cgroup string, args []string, out, hello *os.File) error {
	if cgroup != "" {
		if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(w.cmd.Process.Pid)), 0); err != nil {
			fmt.Fprintf(out, "no cgroup for this keep: %v\n", err)
		}
	}
	b, err := json.Marshal(args)
	if err != nil {
		return err
	}
	if len(b) > maxWarmMessage {
		return fmt.Errorf("keep flags of %d bytes", len(b))
	}
	err = unix.Sendmsg(int(w.ctl.Fd()), b, unix.UnixRights(int(out.Fd()), int(hello.Fd())), nil, 0)
	w.ctl.Close()
	return err
}

// discard ends a warm process that got no keep.
func (w *warmProc) discard() {
	w.ctl.Close() // it exits on end of file
	w.cmd.Process.Kill()
	w.cmd.Wait()
}

// AwaitKeep is the side of a keep process started ahead (WarmFlag): it
// waits on descriptor HelloFD for its keep, then puts the keep's output
// file on descriptors 1 and 2 and its hello pipe on HelloFD, as a keep
// process started for its keep has them, and returns the keep's flags.
// It returns io.EOF when the launcher went away without a keep for it.
func AwaitKeep() ([]string, error) { return awaitKeep(HelloFD, 1, 2, HelloFD) }

// awaitKeep reads the keep from the control socket ctl and puts its
// output file on out1 and out2 and its hello pipe on hello.
func awaitKeep(ctl, out1, out2, hello int) ([]string, error) {
	buf := make([]byte, maxWarmMessage+1)
	oob := make([]byte, unix.CmsgSpace(2*4))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(ctl, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if n == 0 && oobn == 0 {
		return nil, io.EOF
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("control socket: no descriptors with the keep's flags")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 2 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, errors.New("control socket: want the output file and the hello pipe")
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	for _, d := range [][2]int{{fds[0], out1}, {fds[0], out2}, {fds[1], hello}} {
		if err := unix.Dup3(d[0], d[1], 0); err != nil {
			return nil, fmt.Errorf("control socket: dup3: %w", err)
		}
	}
	var args []string
	if n > maxWarmMessage || json.Unmarshal(buf[:n], &args) != nil {
		return nil, errors.New("control socket: the keep's flags are not a JSON list of strings")
	}
	return args, nil
}
