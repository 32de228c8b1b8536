//go:build unix

package wasi

import (
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawSock makes non-blocking reads and writes on a socket, and looks up
// its descriptor, through its RawConn (which keeps the descriptor open
// meanwhile, so that a concurrent close cannot make a call land on a
// reused descriptor), never waiting in the runtime's poller. It does not
// allocate: the callbacks handed to the RawConn are made once per socket,
// and their arguments and results live here, guarded by a lock per
// direction (uncontended: the guest's thread reads, writes are already
// under the connection's write lock).
type rawSock struct {
	raw syscall.RawConn

	rmu    sync.Mutex
	readFn func(uintptr) bool
	rbufs  [][]byte
	rflags int
	rn     int
	rerr   error

	wmu     sync.Mutex
	writeFn func(uintptr) bool
	wbuf    []byte
	wn      int
	werr    error

	cmu   sync.Mutex
	ctlFn func(uintptr)
	fdv   int32
}

func newRawSock(raw syscall.RawConn) *rawSock {
	r := &rawSock{raw: raw}
	r.readFn, r.writeFn, r.ctlFn = r.doRead, r.doWrite, r.doControl
	return r
}

func (r *rawSock) doRead(fd uintptr) bool {
	for {
		switch {
		case len(r.rbufs) == 1 && r.rflags == 0:
			r.rn, r.rerr = syscall.Read(int(fd), r.rbufs[0])
		case len(r.rbufs) == 1:
			r.rn, _, r.rerr = syscall.Recvfrom(int(fd), r.rbufs[0], r.rflags)
		default:
			r.rn, _, _, _, r.rerr = unix.RecvmsgBuffers(int(fd), r.rbufs, nil, r.rflags)
		}
		if r.rerr != syscall.EINTR {
			return true
		}
	}
}

func (r *rawSock) doWrite(fd uintptr) bool {
	for {
		r.wn, r.werr = syscall.Write(int(fd), r.wbuf)
		if r.werr != syscall.EINTR {
			return true
		}
	}
}

func (r *rawSock) doControl(fd uintptr) { r.fdv = int32(fd) }

// write makes one non-blocking write of b to the socket and returns what
// it took; a full socket takes 0 bytes and is no error.
func (r *rawSock) write(b []byte) (int, error) {
	r.wmu.Lock()
	r.wbuf = b
	err := r.raw.Write(r.writeFn)
	n, opErr := r.wn, r.werr
	r.wbuf, r.werr = nil, nil
	r.wmu.Unlock()
	if err == nil {
		err = opErr
	}
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

// recv makes one non-blocking read (recvmsg with flags) into iovs; a
// socket with nothing to read gives unix.EAGAIN itself.
func (r *rawSock) recv(iovs [][]byte, flags int) (int, error) {
	r.rmu.Lock()
	r.rbufs, r.rflags = iovs, flags
	err := r.raw.Read(r.readFn)
	n, opErr := r.rn, r.rerr
	r.rbufs, r.rerr = nil, nil
	r.rmu.Unlock()
	if err != nil {
		return 0, err
	}
	if errno, ok := opErr.(syscall.Errno); ok && errno != unix.EAGAIN {
		return 0, os.NewSyscallError("recvmsg", opErr)
	}
	return max(n, 0), opErr
}

// fd returns the socket's descriptor; -1 once it is closed.
func (r *rawSock) fd() int32 {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	r.fdv = -1
	r.raw.Control(r.ctlFn)
	return r.fdv
}
