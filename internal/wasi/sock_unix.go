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
	var n int
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for {
			n, werr = syscall.Write(int(fd), b)
			if werr != syscall.EINTR {
				return true // never wait in the runtime's poller
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case werr == syscall.EAGAIN:
		return 0, nil
	case werr != nil:
		return 0, &net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", werr)}
	}
	return max(n, 0), nil
}
