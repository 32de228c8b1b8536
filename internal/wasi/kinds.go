package wasi

import (
	"bytes"
	"context"
	"io"
	"os"
	"time"
)

// fdesc is one open descriptor: its kind, which does the work, and what
// WASI keeps per descriptor whatever the kind: the fdflags and the rights.
// Host functions check the rights (fdesc.need) and leave the rest to the
// kind.
type fdesc struct {
	f     kind
	flags uint16
	base  uint64 // rights
	inh   uint64 // inheriting rights
}

func (d *fdesc) nonblock() bool { return d.flags&fdflagNonblock != 0 }
func (d *fdesc) close() error   { return d.f.close() }

// need returns errSuccess when d holds every right in rights, else the
// errno d's kind answers for a call that needs the first one missing.
func (d *fdesc) need(rights uint64) Errno {
	missing := rights &^ d.base
	if missing == 0 {
		return errSuccess
	}
	return d.f.refuse(missing & -missing)
}

// kind is what a descriptor is: stdin, an output stream, null, a host
// file or directory below a preopen, a secret, a listener or a
// connection. Each kind has its own type, which holds all its rules, in
// the manner of wazero's sys.File; methods a kind does not support come
// from noKind. The descriptor table is a slice of *fdesc whose f is one
// of these.
type kind interface {
	filetype() uint8
	// refuse is the errno for a call needing a right the descriptor
	// lacks: EBADF unless the kind says better (ESPIPE for seeking a
	// stream, EISDIR for reading a directory).
	refuse(right uint64) Errno
	read(ctx context.Context, iovs [][]byte, nonblock bool) (int, Errno)
	write(ctx context.Context, iovs [][]byte, nonblock, appendMode bool) (int, Errno)
	pread(iovs [][]byte, off int64) (int, Errno)
	pwrite(iovs [][]byte, off int64) (int, Errno)
	seek(off int64, whence int) (int64, Errno)
	// setFlags checks new fdflags before the descriptor takes them.
	setFlags(flags uint16) Errno
	// filestat fills a 64-byte WASI filestat.
	filestat(b []byte) Errno
	sync() Errno
	advise() Errno
	allocate(off, n int64) Errno
	truncate(n int64) Errno
	setTimes(atim, mtim time.Time) Errno
	// readable and writable tell poll_oneoff whether a read or a write
	// would not block.
	readable() (ok bool, nbytes int, hangup bool, errno Errno)
	writable() (ok bool, errno Errno)
	close() error
}

var (
	_ kind = (*stdinKind)(nil)
	_ kind = (*outputKind)(nil)
	_ kind = (*nullKind)(nil)
	_ kind = (*fileKind)(nil)
	_ kind = (*dirKind)(nil)
	_ kind = (*secretKind)(nil)
	_ kind = (*listenerKind)(nil)
	_ kind = (*connKind)(nil)
)

// noKind is what a kind does not support: a stream that cannot seek,
// sync or be truncated. Every kind embeds it with its filetype.
type noKind struct{ ft uint8 }

func (k noKind) filetype() uint8 { return k.ft }

func (noKind) refuse(right uint64) Errno {
	switch right {
	case rightFdSeek, rightFdTell, rightFdAdvise:
		return errSpipe
	case rightFdSync, rightFdDatasync:
		return errInval
	}
	return errBadf
}

func (noKind) read(context.Context, [][]byte, bool) (int, Errno)        { return 0, errBadf }
func (noKind) write(context.Context, [][]byte, bool, bool) (int, Errno) { return 0, errBadf }
func (noKind) pread([][]byte, int64) (int, Errno)                       { return 0, errSpipe }
func (noKind) pwrite([][]byte, int64) (int, Errno)                      { return 0, errSpipe }
func (noKind) seek(int64, int) (int64, Errno)                           { return 0, errSpipe }
func (noKind) sync() Errno                                              { return errInval }
func (noKind) advise() Errno                                            { return errSpipe }
func (noKind) allocate(int64, int64) Errno                              { return errBadf }
func (noKind) truncate(int64) Errno                                     { return errInval }
func (noKind) setTimes(time.Time, time.Time) Errno                      { return errBadf }
func (noKind) writable() (bool, Errno)                                  { return true, errSuccess }
func (noKind) close() error                                             { return nil }

func (noKind) readable() (bool, int, bool, Errno) { return true, 0, false, errSuccess }

// setFlags: only files append.
func (noKind) setFlags(flags uint16) Errno {
	if flags&fdflagAppend != 0 {
		return errInval
	}
	return errSuccess
}

func (k noKind) filestat(b []byte) Errno {
	clear(b)
	b[16] = k.ft
	return errSuccess
}

// stdinKind reads the run's stdin through a pump shared by every stdin
// descriptor, even for blocking reads, so that a run whose context ends
// is not stuck in the caller's reader (the pump goroutine is, until the
// reader returns).
type stdinKind struct {
	noKind
	s      *System
	pumped *pump // started lazily by poll or a read
}

func (k *stdinKind) read(ctx context.Context, iovs [][]byte, nonblock bool) (int, Errno) {
	if k.s.opts.Stdin == nil {
		return 0, errSuccess
	}
	return k.pump().read(ctx, iovs, nonblock, false)
}

// pump starts reading stdin in the background, so that it can be polled.
func (k *stdinKind) pump() *pump {
	if k.pumped == nil {
		s := k.s
		if s.stdin == nil {
			s.stdin = newPump(s, s.opts.Stdin, nil)
			s.stdin.start(false)
		}
		k.pumped = s.stdin
	}
	return k.pumped
}

func (k *stdinKind) readable() (bool, int, bool, Errno) {
	if k.pumped == nil {
		return true, 0, false, errSuccess
	}
	return k.pumped.readiness()
}

// outputKind is stdout or stderr.
type outputKind struct {
	noKind
	w io.Writer
}

func (k *outputKind) write(_ context.Context, iovs [][]byte, _, _ bool) (int, Errno) {
	return writeAll(k.w, iovs)
}

// writeAll writes the iovecs in order and stops at the first error.
func writeAll(w io.Writer, iovs [][]byte) (int, Errno) {
	total := 0
	for _, b := range iovs {
		n, err := w.Write(b)
		total += n
		if err != nil {
			return total, errnoOf(err)
		}
	}
	return total, errSuccess
}

// nullKind reads end of file and discards writes.
type nullKind struct{ noKind }

func (nullKind) read(context.Context, [][]byte, bool) (int, Errno) { return 0, errSuccess }

func (nullKind) write(_ context.Context, iovs [][]byte, _, _ bool) (int, Errno) {
	total := 0
	for _, b := range iovs {
		total += len(b)
	}
	return total, errSuccess
}

// hostNode is what files and directories below a preopen share: the open
// host handle, the preopen, and the path below its root.
type hostNode struct {
	noKind
	f   *os.File
	pre *preopen
	rel string // path below the preopen root, slash-separated
}

func (k *hostNode) filestat(b []byte) Errno {
	fi, err := k.f.Stat()
	if err != nil {
		return errnoOf(err)
	}
	putFilestat(b, fi)
	return errSuccess
}

func (k *hostNode) setTimes(atim, mtim time.Time) Errno {
	if k.pre.readOnly {
		return errRofs
	}
	return errnoOf(k.pre.root.Chtimes(k.rel, atim, mtim))
}

func (k *hostNode) close() error { return k.f.Close() }

// fileKind is a host file below a preopen. The host file is never opened
// with O_APPEND: append is the descriptor's fdflag, applied at each
// write, so that fd_fdstat_set_flags can clear it and fd_pwrite writes
// where it is told (Go's WriteAt refuses O_APPEND files).
type fileKind struct{ hostNode }

func (k *fileKind) read(_ context.Context, iovs [][]byte, _ bool) (int, Errno) {
	total := 0
	for _, b := range iovs {
		n, err := k.f.Read(b)
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			if total > 0 {
				break
			}
			return 0, errnoOf(err)
		}
		if n < len(b) {
			break
		}
	}
	return total, errSuccess
}

func (k *fileKind) write(_ context.Context, iovs [][]byte, _, appendMode bool) (int, Errno) {
	if appendMode {
		if _, err := k.f.Seek(0, io.SeekEnd); err != nil {
			return 0, errnoOf(err)
		}
	}
	return writeAll(k.f, iovs)
}

func (k *fileKind) pread(iovs [][]byte, off int64) (int, Errno) {
	return positioned(iovs, off, k.f.ReadAt)
}

func (k *fileKind) pwrite(iovs [][]byte, off int64) (int, Errno) {
	return positioned(iovs, off, k.f.WriteAt)
}

// positioned moves through iovs from off with op (ReadAt or WriteAt); end
// of file stops it without an error.
func positioned(iovs [][]byte, off int64, op func([]byte, int64) (int, error)) (int, Errno) {
	total := 0
	for _, b := range iovs {
		n, err := op(b, off)
		total += n
		off += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return total, errnoOf(err)
		}
	}
	return total, errSuccess
}

func (k *fileKind) seek(off int64, whence int) (int64, Errno) {
	pos, err := k.f.Seek(off, whence)
	if err != nil {
		return 0, errnoOf(err)
	}
	return pos, errSuccess
}

func (*fileKind) setFlags(uint16) Errno { return errSuccess }

func (k *fileKind) sync() Errno            { return errnoOf(k.f.Sync()) }
func (*fileKind) advise() Errno            { return errSuccess } // a hint; Go has no portable posix_fadvise
func (k *fileKind) truncate(n int64) Errno { return errnoOf(k.f.Truncate(n)) }

func (k *fileKind) allocate(off, n int64) Errno {
	fi, err := k.f.Stat()
	if err != nil {
		return errnoOf(err)
	}
	if end := off + n; end > fi.Size() {
		return errnoOf(k.f.Truncate(end))
	}
	return errSuccess
}

func (k *fileKind) readable() (bool, int, bool, Errno) {
	nbytes := 0
	if fi, err := k.f.Stat(); err == nil {
		if pos, err := k.f.Seek(0, io.SeekCurrent); err == nil && fi.Size() > pos {
			nbytes = int(fi.Size() - pos)
		}
	}
	return true, nbytes, false, errSuccess
}

// dirKind is a directory below a preopen, or the preopen itself. It is
// read by fd_readdir cookies: byte reads and writes answer EISDIR, and it
// has no seek right.
type dirKind struct {
	hostNode
	preName string   // guest path, only on the preopened descriptor itself
	entries []dirent // the listing fd_readdir serves, read again at cookie 0
}

func (*dirKind) refuse(right uint64) Errno {
	switch right {
	case rightFdRead, rightFdWrite, rightFdSeek, rightFdTell, rightFdFilestatSetSize, rightFdAllocate:
		return errIsdir
	case rightFdAdvise:
		return errBadf
	}
	return errNotcapable
}

func (*dirKind) read(context.Context, [][]byte, bool) (int, Errno)        { return 0, errIsdir }
func (*dirKind) write(context.Context, [][]byte, bool, bool) (int, Errno) { return 0, errIsdir }
func (*dirKind) pread([][]byte, int64) (int, Errno)                       { return 0, errIsdir }
func (*dirKind) pwrite([][]byte, int64) (int, Errno)                      { return 0, errIsdir }
func (*dirKind) seek(int64, int) (int64, Errno)                           { return 0, errIsdir }
func (*dirKind) truncate(int64) Errno                                     { return errIsdir }
func (*dirKind) allocate(int64, int64) Errno                              { return errIsdir }
func (*dirKind) advise() Errno                                            { return errBadf }
func (*dirKind) sync() Errno                                              { return errSuccess }

// secretKind is a read-only file held in memory, never on the host's disk.
type secretKind struct {
	noKind
	r *bytes.Reader
}

func (k *secretKind) read(_ context.Context, iovs [][]byte, _ bool) (int, Errno) {
	total := 0
	for _, b := range iovs {
		n, _ := k.r.Read(b)
		total += n
		if n < len(b) {
			break
		}
	}
	return total, errSuccess
}

func (k *secretKind) pread(iovs [][]byte, off int64) (int, Errno) {
	total := 0
	for _, b := range iovs {
		n, _ := k.r.ReadAt(b, off)
		total += n
		off += int64(n)
		if n < len(b) {
			break
		}
	}
	return total, errSuccess
}

func (k *secretKind) seek(off int64, whence int) (int64, Errno) {
	pos, err := k.r.Seek(off, whence)
	if err != nil {
		return 0, errInval
	}
	return pos, errSuccess
}

func (*secretKind) advise() Errno { return errSuccess }

func (k *secretKind) filestat(b []byte) Errno {
	clear(b)
	b[16] = k.ft
	le.PutUint64(b[24:], 1)                  // nlink
	le.PutUint64(b[32:], uint64(k.r.Size())) // size
	return errSuccess
}

func (k *secretKind) readable() (bool, int, bool, Errno) {
	return true, k.r.Len(), false, errSuccess
}

// listenerKind is a bound socket: sock_accept takes its connections.
type listenerKind struct {
	noKind
	ln *listener
}

func (*listenerKind) read(context.Context, [][]byte, bool) (int, Errno) { return 0, errNotconn }

func (k *listenerKind) readable() (bool, int, bool, Errno) {
	ok, errno := k.ln.readiness()
	nbytes := 0
	if ok && errno == errSuccess {
		nbytes = 1
	}
	return ok, nbytes, false, errno
}

func (k *listenerKind) close() error { return k.ln.close() }

// connKind is a connected socket, accepted or dialled.
type connKind struct {
	noKind
	c *conn
}

func (k *connKind) read(ctx context.Context, iovs [][]byte, nonblock bool) (int, Errno) {
	return k.c.read(ctx, iovs, nonblock, false)
}

func (k *connKind) write(ctx context.Context, iovs [][]byte, nonblock, _ bool) (int, Errno) {
	return k.c.writev(ctx, iovs, nonblock)
}

func (k *connKind) readable() (bool, int, bool, Errno) { return k.c.readiness() }
func (k *connKind) writable() (bool, Errno)            { return k.c.writable() }
func (k *connKind) close() error                       { return k.c.close() }

// dirOf returns d's directory kind, or nil when d is not a directory.
func dirOf(d *fdesc) *dirKind {
	k, _ := d.f.(*dirKind)
	return k
}
