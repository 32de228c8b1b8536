package wasi

import (
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
)

// Errno is a WASI error number (wasi_snapshot_preview1 "errno").
type Errno uint16

// The errno values Castellan returns, numbered as in the WASI preview 1
// witx (typenames.witx); the numbers are the ABI.
const (
	errSuccess        Errno = 0
	err2big           Errno = 1
	errAcces          Errno = 2
	errAddrinuse      Errno = 3
	errAgain          Errno = 6
	errBadf           Errno = 8
	errBusy           Errno = 10
	errConnaborted    Errno = 13
	errConnrefused    Errno = 14
	errConnreset      Errno = 15
	errExist          Errno = 20
	errFault          Errno = 21
	errFbig           Errno = 22
	errIntr           Errno = 27
	errInval          Errno = 28
	errIo             Errno = 29
	errIsdir          Errno = 31
	errLoop           Errno = 32
	errMfile          Errno = 33
	errNametoolong    Errno = 37
	errNfile          Errno = 41
	errNoent          Errno = 44
	errNomem          Errno = 48
	errNospc          Errno = 51
	errNosys          Errno = 52
	errNotconn        Errno = 53
	errNotdir         Errno = 54
	errNotempty       Errno = 55
	errNotsock        Errno = 57
	errNotsup         Errno = 58
	errOverflow       Errno = 61
	errPerm           Errno = 63
	errPipe           Errno = 64
	errRofs           Errno = 69
	errSpipe          Errno = 70
	errTimedout       Errno = 73
	errXdev           Errno = 75
	errNotcapable     Errno = 76
	errHostunreach    Errno = 23
	errNetunreach     Errno = 40
	errAddrnotavail   Errno = 4
	errProtonosupport Errno = 66
)

// Filetypes (filetype).
const (
	filetypeUnknown         = 0
	filetypeBlockDevice     = 1
	filetypeCharacterDevice = 2
	filetypeDirectory       = 3
	filetypeRegularFile     = 4
	filetypeSocketDgram     = 5
	filetypeSocketStream    = 6
	filetypeSymbolicLink    = 7
)

// Descriptor flags (fdflags).
const (
	fdflagAppend   = 1 << 0
	fdflagDsync    = 1 << 1
	fdflagNonblock = 1 << 2
	fdflagRsync    = 1 << 3
	fdflagSync     = 1 << 4
)

// Open flags (oflags).
const (
	oflagCreat     = 1 << 0
	oflagDirectory = 1 << 1
	oflagExcl      = 1 << 2
	oflagTrunc     = 1 << 3
)

// Prestat tags: WASI defines only 0, a directory; preopentypeNone marks a
// descriptor that is open but not a preopen (see fdPrestatGet).
const (
	preopentypeDir  = 0
	preopentypeNone = 0xff
)

// lookupSymlinkFollow is the only lookupflags bit.
const lookupSymlinkFollow = 1

// Set-times flags (fstflags).
const (
	fstAtim    = 1 << 0
	fstAtimNow = 1 << 1
	fstMtim    = 1 << 2
	fstMtimNow = 1 << 3
)

// Rights.
const (
	rightFdDatasync uint64 = 1 << iota
	rightFdRead
	rightFdSeek
	rightFdFdstatSetFlags
	rightFdSync
	rightFdTell
	rightFdWrite
	rightFdAdvise
	rightFdAllocate
	rightPathCreateDirectory
	rightPathCreateFile
	rightPathLinkSource
	rightPathLinkTarget
	rightPathOpen
	rightFdReaddir
	rightPathReadlink
	rightPathRenameSource
	rightPathRenameTarget
	rightPathFilestatGet
	rightPathFilestatSetSize
	rightPathFilestatSetTimes
	rightFdFilestatGet
	rightFdFilestatSetSize
	rightFdFilestatSetTimes
	rightPathSymlink
	rightPathRemoveDirectory
	rightPathUnlinkFile
	rightPollFdReadwrite
	rightSockShutdown
	rightSockAccept
)

const (
	// Rights of a regular file open for reading and writing.
	rightsFile = rightFdDatasync | rightFdRead | rightFdSeek | rightFdFdstatSetFlags |
		rightFdSync | rightFdTell | rightFdWrite | rightFdAdvise | rightFdAllocate |
		rightFdFilestatGet | rightFdFilestatSetSize | rightFdFilestatSetTimes | rightPollFdReadwrite
	// Rights of a secret: read, seek and stat, nothing that writes.
	rightsSecret = rightFdRead | rightFdSeek | rightFdTell | rightFdFilestatGet | rightPollFdReadwrite | rightFdAdvise | rightFdFdstatSetFlags
	// Write rights of a regular file.
	rightsFileWrite = rightFdDatasync | rightFdWrite | rightFdAllocate | rightFdFilestatSetSize
	// Rights of a directory.
	rightsDir = rightFdFdstatSetFlags | rightFdSync | rightFdDatasync | rightFdAdvise | rightPathCreateDirectory |
		rightPathCreateFile | rightPathLinkSource | rightPathLinkTarget | rightPathOpen |
		rightFdReaddir | rightPathReadlink | rightPathRenameSource | rightPathRenameTarget |
		rightPathFilestatGet | rightPathFilestatSetSize | rightPathFilestatSetTimes |
		rightFdFilestatGet | rightFdFilestatSetTimes | rightPathSymlink |
		rightPathRemoveDirectory | rightPathUnlinkFile
	// Write rights of a directory.
	rightsDirWrite = rightPathCreateDirectory | rightPathCreateFile | rightPathLinkTarget |
		rightPathRenameSource | rightPathRenameTarget | rightPathFilestatSetSize |
		rightPathFilestatSetTimes | rightFdFilestatSetTimes | rightPathSymlink |
		rightPathRemoveDirectory | rightPathUnlinkFile | rightPathLinkSource
	// Rights of a character device (stdio, null).
	rightsTTY = rightFdRead | rightFdFdstatSetFlags | rightFdWrite | rightFdFilestatGet | rightPollFdReadwrite
	// Rights of a connected socket.
	rightsSock = rightFdRead | rightFdFdstatSetFlags | rightFdWrite | rightFdFilestatGet |
		rightPollFdReadwrite | rightSockShutdown
	// Rights of a listening socket.
	rightsListener = rightFdFdstatSetFlags | rightFdFilestatGet | rightPollFdReadwrite | rightSockAccept | rightFdRead
)

// Clocks (clockid).
const (
	clockRealtime       = 0
	clockMonotonic      = 1
	clockProcessCputime = 2
	clockThreadCputime  = 3
)

// poll_oneoff event types and flags.
const (
	eventtypeClock   = 0
	eventtypeFdRead  = 1
	eventtypeFdWrite = 2

	subscriptionClockAbstime = 1
	eventFdReadwriteHangup   = 1

	subscriptionSize = 48
	eventSize        = 32
)

// Whence values for fd_seek.
const (
	whenceSet = 0
	whenceCur = 1
	whenceEnd = 2
)

// Socket flags.
const (
	riflagRecvPeek    = 1
	riflagRecvWaitall = 2
	sdflagRd          = 1
	sdflagWr          = 2
)

var le = binary.LittleEndian

// fault is panicked by memory accessors on an out-of-range pointer; the
// host function wrapper turns it into EFAULT.
type fault struct{}

// mem is a bounds-checked view of linear memory.
type mem []byte

func (m mem) bytes(ptr, n uint32) []byte {
	end := uint64(ptr) + uint64(n)
	if end > uint64(len(m)) {
		panic(fault{})
	}
	return m[ptr:end:end]
}

func (m mem) putU32(ptr uint32, v uint32) { le.PutUint32(m.bytes(ptr, 4), v) }
func (m mem) putU64(ptr uint32, v uint64) { le.PutUint64(m.bytes(ptr, 8), v) }
func (m mem) putU16(ptr uint32, v uint16) { le.PutUint16(m.bytes(ptr, 2), v) }

// iovecs reads an array of n (buf, len) pairs and returns the buffers,
// each checked against memory.
func (m mem) iovecs(ptr, n uint32) [][]byte {
	if n > 1024 { // IOV_MAX
		panic(errInval)
	}
	raw := m.bytes(ptr, n*8)
	out := make([][]byte, n)
	for i := range out {
		out[i] = m.bytes(le.Uint32(raw[i*8:]), le.Uint32(raw[i*8+4:]))
	}
	return out
}

// errnoOf maps a Go error to the closest WASI errno.
func errnoOf(err error) Errno {
	if err == nil {
		return errSuccess
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		if e, ok := sysErrnos[en]; ok {
			return e
		}
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errNoent
	case errors.Is(err, fs.ErrExist):
		return errExist
	case errors.Is(err, fs.ErrPermission):
		return errPerm
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errAgain
	case errors.Is(err, errors.ErrUnsupported):
		return errNotsup
	case errors.Is(err, net.ErrClosed), errors.Is(err, fs.ErrClosed):
		return errBadf
	case errors.Is(err, io.ErrClosedPipe), errors.Is(err, syscall.EPIPE):
		return errPipe
	case isEscape(err):
		return errPerm
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errTimedout
	}
	if strings.Contains(err.Error(), "tls:") {
		return errConnaborted
	}
	return errIo
}

// isEscape reports os.Root refusing a path that leaves the root.
func isEscape(err error) bool {
	return err != nil && strings.Contains(err.Error(), "path escapes from parent")
}

var sysErrnos = map[syscall.Errno]Errno{
	syscall.E2BIG:         err2big,
	syscall.EACCES:        errAcces,
	syscall.EADDRINUSE:    errAddrinuse,
	syscall.EAGAIN:        errAgain,
	syscall.EBADF:         errBadf,
	syscall.EBUSY:         errBusy,
	syscall.ECONNABORTED:  errConnaborted,
	syscall.ECONNREFUSED:  errConnrefused,
	syscall.ECONNRESET:    errConnreset,
	syscall.EEXIST:        errExist,
	syscall.EFBIG:         errFbig,
	syscall.EINTR:         errIntr,
	syscall.EINVAL:        errInval,
	syscall.EIO:           errIo,
	syscall.EISDIR:        errIsdir,
	syscall.ELOOP:         errLoop,
	syscall.EMFILE:        errMfile,
	syscall.ENAMETOOLONG:  errNametoolong,
	syscall.ENFILE:        errNfile,
	syscall.ENOENT:        errNoent,
	syscall.ENOMEM:        errNomem,
	syscall.ENOSPC:        errNospc,
	syscall.ENOSYS:        errNosys,
	syscall.ENOTCONN:      errNotconn,
	syscall.ENOTDIR:       errNotdir,
	syscall.ENOTEMPTY:     errNotempty,
	syscall.EPERM:         errPerm,
	syscall.EPIPE:         errPipe,
	syscall.EROFS:         errRofs,
	syscall.ESPIPE:        errSpipe,
	syscall.ETIMEDOUT:     errTimedout,
	syscall.EXDEV:         errXdev,
	syscall.EHOSTUNREACH:  errHostunreach,
	syscall.ENETUNREACH:   errNetunreach,
	syscall.EADDRNOTAVAIL: errAddrnotavail,
}
