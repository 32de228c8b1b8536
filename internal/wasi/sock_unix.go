//go:build unix

package wasi

import (
	"net"
	"os"
	"syscall"
)

// writeNow makes one non-blocking write of b to the socket and returns
// what it took; a full socket takes 0 bytes and is no error.
func writeNow(raw syscall.RawConn, b []byte) (int, error) {
	n, err := rawOnce(raw.Write, func(fd int) (int, error) { return syscall.Write(fd, b) })
	switch {
	case err == syscall.EAGAIN:
		return 0, nil
	case err != nil:
		if _, ok := err.(syscall.Errno); ok {
			err = &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", err)}
		}
		return 0, err
	}
	return max(n, 0), nil
}

// rawOnce runs op once on the socket (again if interrupted by a signal),
// through rw (RawConn.Read or Write, which keep the descriptor open
// meanwhile), never waiting in the runtime's poller. A socket that is not
// ready gives syscall.EAGAIN; op's other errno values come back as they
// are, and a closed socket as the runtime's error.
func rawOnce(rw func(func(uintptr) bool) error, op func(fd int) (int, error)) (int, error) {
	var n int
	var opErr error
	err := rw(func(fd uintptr) bool {
		for {
			n, opErr = op(int(fd))
			if opErr != syscall.EINTR {
				return true
			}
		}
	})
	if err != nil {
		return 0, err
	}
	return n, opErr
}
