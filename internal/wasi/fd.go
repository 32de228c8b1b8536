package wasi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
)

// fdesc is one open descriptor. Exactly one of the kind-specific fields
// is set, except for stdio which uses r or w.
type fdesc struct {
	filetype uint8
	flags    uint16
	base     uint64 // rights
	inh      uint64 // inheriting rights

	// stdio and null
	stdin  bool
	null   bool
	w      io.Writer
	sys    *System
	pumped *pump // stdin pump, started lazily by poll or a nonblocking read

	// files and directories inside a preopen
	file    *os.File
	dir     *dirState
	pre     *preopen
	rel     string // path below the preopen root, slash-separated
	preName string // guest path, only on the preopened descriptor itself

	// a secret: a read-only file held in memory, never on the host's disk
	mem *bytes.Reader

	// sockets
	ln   *listener
	conn *conn
}

// preopen is a host directory shared by its descriptors. All access goes
// through root, which refuses paths that leave it, via ".." or symlinks.
type preopen struct {
	root     *os.Root
	readOnly bool
}

func (d *fdesc) close() error {
	switch {
	case d.file != nil:
		return d.file.Close()
	case d.dir != nil:
		if d.dir.f != nil {
			return d.dir.f.Close()
		}
	case d.ln != nil:
		return d.ln.close()
	case d.conn != nil:
		return d.conn.close()
	}
	return nil
}

func (d *fdesc) nonblock() bool { return d.flags&fdflagNonblock != 0 }

// open makes the descriptor of one config entry.
func (s *System) open(ctx context.Context, f config.File) (*fdesc, error) {
	switch f.Kind {
	case config.KindStdin:
		return &fdesc{filetype: filetypeCharacterDevice, base: rightsTTY &^ rightFdWrite, stdin: true, sys: s}, nil
	case config.KindStdout:
		return &fdesc{filetype: filetypeCharacterDevice, base: rightsTTY &^ rightFdRead, w: orDiscard(s.opts.Stdout)}, nil
	case config.KindStderr:
		return &fdesc{filetype: filetypeCharacterDevice, base: rightsTTY &^ rightFdRead, w: orDiscard(s.opts.Stderr)}, nil
	case config.KindNull:
		return &fdesc{filetype: filetypeCharacterDevice, base: rightsTTY, null: true}, nil
	case config.KindListen:
		ln, err := s.listen(f)
		if err != nil {
			return nil, err
		}
		// Preopened sockets start non-blocking, as under wasmtime and
		// wazero: Go's os.NewFile only polls descriptors that already are.
		return &fdesc{filetype: filetypeSocketStream, base: rightsListener, flags: fdflagNonblock, ln: ln}, nil
	case config.KindConnect:
		c, err := s.connect(ctx, f)
		if err != nil {
			return nil, err
		}
		return &fdesc{filetype: filetypeSocketStream, base: rightsSock, flags: fdflagNonblock, conn: c}, nil
	case config.KindSecret:
		if f.Secret == nil {
			return nil, errorf("the secret %q was not supplied", f.Name)
		}
		return &fdesc{filetype: filetypeRegularFile, base: rightsSecret, mem: bytes.NewReader(f.Secret)}, nil
	case config.KindDir:
		path := f.Path
		if path == "" {
			return nil, errorf("no host path")
		}
		if !filepath.IsAbs(path) && s.opts.ConfigDir != "" {
			path = filepath.Join(s.opts.ConfigDir, path)
		}
		root, err := os.OpenRoot(path)
		if err != nil {
			return nil, err
		}
		p := &preopen{root: root, readOnly: f.ReadOnly}
		s.roots = append(s.roots, root)
		dir, err := root.Open(".")
		if err != nil {
			return nil, err
		}
		base, inh := rightsDir, rightsDir|rightsFile
		if f.ReadOnly {
			base &^= rightsDirWrite
			inh &^= rightsDirWrite | rightsFileWrite
		}
		name := f.Name
		if name == "" {
			name = "."
		}
		return &fdesc{filetype: filetypeDirectory, base: base, inh: inh, pre: p, rel: ".", preName: name, dir: &dirState{f: dir}}, nil
	}
	return nil, errorf("unknown kind %q", f.Kind)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

func fdClose(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	fd := uint32(p[0])
	d, errno := s.get(fd)
	if errno != errSuccess {
		return errno
	}
	s.fds[fd] = nil
	s.nopen--
	return errnoOf(d.close())
}

func fdRenumber(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	from, to := uint32(p[0]), uint32(p[1])
	d, errno := s.get(from)
	if errno != errSuccess {
		return errno
	}
	old, errno := s.get(to)
	if errno != errSuccess {
		return errno
	}
	if from == to {
		return errSuccess
	}
	old.close()
	s.fds[to] = d
	s.fds[from] = nil
	s.nopen--
	return errSuccess
}

func fdFdstatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	b := m.bytes(uint32(p[1]), 24)
	clear(b)
	b[0] = d.filetype
	le.PutUint16(b[2:], d.flags)
	le.PutUint64(b[8:], d.base)
	le.PutUint64(b[16:], d.inh)
	return errSuccess
}

func fdFdstatSetFlags(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	flags := uint16(p[1])
	if flags&^(fdflagAppend|fdflagDsync|fdflagNonblock|fdflagRsync|fdflagSync) != 0 {
		return errInval
	}
	if flags&fdflagAppend != 0 && d.file == nil {
		return errInval
	}
	d.flags = flags
	return errSuccess
}

func fdFdstatSetRights(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	base, inh := p[1], p[2]
	if base&^d.base != 0 || inh&^d.inh != 0 {
		return errNotcapable
	}
	d.base, d.inh = base, inh
	return errSuccess
}

func fdPrestatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	b := m.bytes(uint32(p[1]), 8)
	clear(b)
	if d.preName == "" {
		// An open descriptor that is not a preopen (a socket before a
		// directory in the config) answers success with a tag that is not
		// "dir". EBADF would end the preopen scan of Go and wasi-libc, and
		// wasi-libc exits on any other error; both skip unknown tags.
		b[0] = preopentypeNone
		return errSuccess
	}
	b[0] = preopentypeDir
	le.PutUint32(b[4:], uint32(len(d.preName)))
	return errSuccess
}

func fdPrestatDirName(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.preName == "" {
		return errNotdir
	}
	if uint32(p[2]) < uint32(len(d.preName)) {
		return errNametoolong
	}
	copy(m.bytes(uint32(p[1]), uint32(len(d.preName))), d.preName)
	return errSuccess
}

func fdRead(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	n, errno := s.read(ctx, d, iovs, false)
	if errno != errSuccess {
		return errno
	}
	m.putU32(uint32(p[3]), uint32(n))
	return errSuccess
}

// read fills iovs from d. peek leaves the data in place (sockets only).
func (s *System) read(ctx context.Context, d *fdesc, iovs [][]byte, peek bool) (int, Errno) {
	if d.base&rightFdRead == 0 {
		return 0, errBadf
	}
	switch {
	case d.file != nil:
		total := 0
		for _, b := range iovs {
			n, err := d.file.Read(b)
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
	case d.dir != nil:
		return 0, errIsdir
	case d.mem != nil:
		total := 0
		for _, b := range iovs {
			n, _ := d.mem.Read(b)
			total += n
			if n < len(b) {
				break
			}
		}
		return total, errSuccess
	case d.null:
		return 0, errSuccess
	case d.stdin:
		return s.readStdin(ctx, d, iovs)
	case d.conn != nil:
		return d.conn.read(ctx, iovs, d.nonblock(), peek)
	case d.ln != nil:
		return 0, errNotconn
	}
	return 0, errBadf
}

// readStdin reads through the stdin pump, even for blocking reads, so that
// a run whose context ends is not stuck in the caller's reader (the pump
// goroutine is, until the reader returns).
func (s *System) readStdin(ctx context.Context, d *fdesc, iovs [][]byte) (int, Errno) {
	if s.opts.Stdin == nil {
		return 0, errSuccess
	}
	return s.stdinPump(d).read(ctx, iovs, d.nonblock(), false)
}

// stdinPump starts reading stdin in the background, so that it can be
// polled. It is shared by every stdin descriptor of the system.
func (s *System) stdinPump(d *fdesc) *pump {
	if d.pumped == nil {
		if s.stdin == nil {
			s.stdin = newPump(s, s.opts.Stdin, nil)
			s.stdin.start(false)
		}
		d.pumped = s.stdin
	}
	return d.pumped
}

func fdWrite(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	n, errno := s.write(ctx, d, iovs)
	if errno != errSuccess && n == 0 {
		return errno
	}
	m.putU32(uint32(p[3]), uint32(n))
	return errSuccess
}

func (s *System) write(ctx context.Context, d *fdesc, iovs [][]byte) (int, Errno) {
	if d.base&rightFdWrite == 0 {
		return 0, errBadf
	}
	switch {
	case d.file != nil:
		if d.flags&fdflagAppend != 0 {
			if _, err := d.file.Seek(0, io.SeekEnd); err != nil {
				return 0, errnoOf(err)
			}
		}
		total := 0
		for _, b := range iovs {
			n, err := d.file.Write(b)
			total += n
			if err != nil {
				return total, errnoOf(err)
			}
		}
		if d.flags&(fdflagSync|fdflagDsync) != 0 {
			if err := d.file.Sync(); err != nil {
				return total, errnoOf(err)
			}
		}
		return total, errSuccess
	case d.null:
		total := 0
		for _, b := range iovs {
			total += len(b)
		}
		return total, errSuccess
	case d.w != nil:
		total := 0
		for _, b := range iovs {
			n, err := d.w.Write(b)
			total += n
			if err != nil {
				return total, errnoOf(err)
			}
		}
		return total, errSuccess
	case d.conn != nil:
		return d.conn.write(ctx, concat(iovs), d.nonblock())
	case d.dir != nil:
		return 0, errIsdir
	}
	return 0, errBadf
}

// concat joins buffers, without copying when there is only one.
func concat(iovs [][]byte) []byte {
	var nonEmpty [][]byte
	n := 0
	for _, b := range iovs {
		if len(b) > 0 {
			nonEmpty = append(nonEmpty, b)
			n += len(b)
		}
	}
	switch len(nonEmpty) {
	case 0:
		return nil
	case 1:
		return nonEmpty[0]
	}
	out := make([]byte, 0, n)
	for _, b := range nonEmpty {
		out = append(out, b...)
	}
	return out
}

func fdPread(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return positionedIO(s, m, p, rightFdRead, func(f *os.File, b []byte, off int64) (int, error) {
		n, err := f.ReadAt(b, off)
		if err == io.EOF {
			return n, errStop
		}
		return n, err
	})
}

func fdPwrite(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return positionedIO(s, m, p, rightFdWrite, (*os.File).WriteAt)
}

// errStop ends positionedIO's loop without an error (end of file).
var errStop = errors.New("stop")

// positionedIO does fd_pread and fd_pwrite: params (fd, iovs, iovs_len,
// offset, result pointer); it needs right on the descriptor, moves through
// the iovecs from offset with op, and stores the byte count.
func positionedIO(s *System, m mem, p []uint64, right uint64, op func(f *os.File, b []byte, off int64) (int, error)) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.file == nil && d.mem == nil {
		return errSpipe
	}
	if d.base&right == 0 {
		return errBadf
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	off := int64(p[3])
	if off < 0 {
		return errInval
	}
	if d.mem != nil {
		total := 0
		for _, b := range iovs {
			n, _ := d.mem.ReadAt(b, off)
			total += n
			off += int64(n)
			if n < len(b) {
				break
			}
		}
		m.putU32(uint32(p[4]), uint32(total))
		return errSuccess
	}
	total := 0
	for _, b := range iovs {
		n, err := op(d.file, b, off)
		total += n
		off += int64(n)
		if err == errStop {
			break
		}
		if err != nil {
			return errnoOf(err)
		}
	}
	m.putU32(uint32(p[4]), uint32(total))
	return errSuccess
}

func fdSeek(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	off, whence := int64(p[1]), uint32(p[2])
	pos, errno := d.seek(off, whence)
	if errno != errSuccess {
		return errno
	}
	m.putU64(uint32(p[3]), uint64(pos))
	return errSuccess
}

func (d *fdesc) seek(off int64, whence uint32) (int64, Errno) {
	if whence > whenceEnd {
		return 0, errInval
	}
	if d.dir != nil {
		// Directories are read by cookie; only a rewind means anything.
		if off == 0 && whence != whenceEnd {
			return 0, errSuccess
		}
		return 0, errInval
	}
	if d.mem != nil {
		pos, err := d.mem.Seek(off, int(whence))
		if err != nil {
			return 0, errInval
		}
		return pos, errSuccess
	}
	if d.file == nil {
		return 0, errSpipe
	}
	pos, err := d.file.Seek(off, int(whence))
	if err != nil {
		return 0, errnoOf(err)
	}
	return pos, errSuccess
}

func fdTell(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	pos, errno := d.seek(0, whenceCur)
	if errno != errSuccess {
		return errno
	}
	m.putU64(uint32(p[1]), uint64(pos))
	return errSuccess
}

func fdSync(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	switch {
	case d.file != nil:
		return errnoOf(d.file.Sync())
	case d.dir != nil:
		return errSuccess
	}
	return errInval
}

func fdDatasync(s *System, ctx context.Context, c engine.Caller, m mem, p []uint64) Errno {
	return fdSync(s, ctx, c, m, p)
}

func fdAdvise(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if uint32(p[3]) > 5 {
		return errInval
	}
	if d.file == nil && d.mem == nil {
		if d.dir != nil {
			return errBadf
		}
		return errSpipe
	}
	// Advice is only a hint; Go has no portable posix_fadvise.
	return errSuccess
}

func fdAllocate(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.file == nil {
		return errBadf
	}
	if d.base&rightFdWrite == 0 {
		return errBadf
	}
	off, n := int64(p[1]), int64(p[2])
	if off < 0 || n <= 0 || off+n < off {
		return errInval
	}
	fi, err := d.file.Stat()
	if err != nil {
		return errnoOf(err)
	}
	if end := off + n; end > fi.Size() {
		return errnoOf(d.file.Truncate(end))
	}
	return errSuccess
}

func fdFilestatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	b := m.bytes(uint32(p[1]), 64)
	var fi fs.FileInfo
	var err error
	switch {
	case d.file != nil:
		fi, err = d.file.Stat()
	case d.dir != nil:
		fi, err = d.dir.f.Stat()
	case d.mem != nil:
		clear(b)
		b[16] = d.filetype
		le.PutUint64(b[24:], 1)                    // nlink
		le.PutUint64(b[32:], uint64(d.mem.Size())) // size
		return errSuccess
	default:
		clear(b)
		b[16] = d.filetype
		return errSuccess
	}
	if err != nil {
		return errnoOf(err)
	}
	putFilestat(b, fi)
	return errSuccess
}

func fdFilestatSetSize(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.dir != nil {
		return errIsdir
	}
	if d.file == nil {
		return errInval
	}
	if d.base&rightFdFilestatSetSize == 0 || d.base&rightFdWrite == 0 {
		return errBadf
	}
	if int64(p[1]) < 0 {
		return errInval
	}
	return errnoOf(d.file.Truncate(int64(p[1])))
}

func fdFilestatSetTimes(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.pre == nil {
		return errBadf
	}
	if d.pre.readOnly {
		return errRofs
	}
	atim, mtim, errno := times(p[1], p[2], uint16(p[3]))
	if errno != errSuccess {
		return errno
	}
	return errnoOf(d.pre.root.Chtimes(d.rel, atim, mtim))
}

// times decodes set-times arguments; a zero time leaves that time as is.
func times(a, m uint64, fst uint16) (atim, mtim time.Time, errno Errno) {
	if fst&^(fstAtim|fstAtimNow|fstMtim|fstMtimNow) != 0 ||
		fst&(fstAtim|fstAtimNow) == fstAtim|fstAtimNow ||
		fst&(fstMtim|fstMtimNow) == fstMtim|fstMtimNow {
		return atim, mtim, errInval
	}
	now := time.Now()
	switch {
	case fst&fstAtimNow != 0:
		atim = now
	case fst&fstAtim != 0:
		atim = time.Unix(0, int64(a))
	}
	switch {
	case fst&fstMtimNow != 0:
		mtim = now
	case fst&fstMtim != 0:
		mtim = time.Unix(0, int64(m))
	}
	return atim, mtim, errSuccess
}
