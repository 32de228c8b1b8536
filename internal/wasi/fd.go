package wasi

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
)

// preopen is a host directory shared by its descriptors. All access goes
// through root, which refuses paths that leave it, via ".." or symlinks.
type preopen struct {
	root     *os.Root
	readOnly bool
}

// open makes the descriptor of one config entry.
func (s *System) open(ctx context.Context, f config.File) (*fdesc, error) {
	switch f.Kind {
	case config.KindStdin:
		return &fdesc{f: &stdinKind{noKind: noKind{filetypeCharacterDevice}, s: s}, base: rightsTTY &^ rightFdWrite}, nil
	case config.KindStdout:
		return &fdesc{f: &outputKind{noKind: noKind{filetypeCharacterDevice}, w: orDiscard(s.opts.Stdout)}, base: rightsTTY &^ rightFdRead}, nil
	case config.KindStderr:
		return &fdesc{f: &outputKind{noKind: noKind{filetypeCharacterDevice}, w: orDiscard(s.opts.Stderr)}, base: rightsTTY &^ rightFdRead}, nil
	case config.KindNull:
		return &fdesc{f: nullKind{noKind{filetypeCharacterDevice}}, base: rightsTTY}, nil
	case config.KindListen:
		ln, err := s.listen(f)
		if err != nil {
			return nil, err
		}
		// Preopened sockets start non-blocking, as under wasmtime and
		// wazero: Go's os.NewFile only polls descriptors that already are.
		return &fdesc{f: &listenerKind{noKind: noKind{filetypeSocketStream}, ln: ln}, base: rightsListener, flags: fdflagNonblock}, nil
	case config.KindConnect:
		c, err := s.connect(ctx, f)
		if err != nil {
			return nil, err
		}
		return &fdesc{f: &connKind{noKind: noKind{filetypeSocketStream}, c: c}, base: rightsSock, flags: fdflagNonblock}, nil
	case config.KindSecret:
		if f.Secret == nil {
			return nil, errorf("the secret %q was not supplied", f.Name)
		}
		return &fdesc{f: &secretKind{noKind: noKind{filetypeRegularFile}, r: bytes.NewReader(f.Secret)}, base: rightsSecret}, nil
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
		k := &dirKind{hostNode: hostNode{noKind{filetypeDirectory}, dir, p, "."}, preName: name}
		return &fdesc{f: k, base: base, inh: inh}, nil
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
	b[0] = d.f.filetype()
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
	if errno := d.need(rightFdFdstatSetFlags); errno != errSuccess {
		return errno
	}
	if errno := d.f.setFlags(flags); errno != errSuccess {
		return errno
	}
	d.flags = flags
	return errSuccess
}

// fdFdstatSetRights only drops rights; every call that needs one checks
// it (fdesc.need, System.resolve), so a dropped right stays dropped for
// the descriptor and, for inheriting rights, for what it opens.
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
	dir := dirOf(d)
	if dir == nil || dir.preName == "" {
		// An open descriptor that is not a preopen (a socket before a
		// directory in the config) answers success with a tag that is not
		// "dir". EBADF would end the preopen scan of Go and wasi-libc, and
		// wasi-libc exits on any other error; both skip unknown tags.
		b[0] = preopentypeNone
		return errSuccess
	}
	b[0] = preopentypeDir
	le.PutUint32(b[4:], uint32(len(dir.preName)))
	return errSuccess
}

func fdPrestatDirName(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	dir := dirOf(d)
	if dir == nil || dir.preName == "" {
		return errNotdir
	}
	if uint32(p[2]) < uint32(len(dir.preName)) {
		return errNametoolong
	}
	copy(m.bytes(uint32(p[1]), uint32(len(dir.preName))), dir.preName)
	return errSuccess
}

func fdRead(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	if errno := d.need(rightFdRead); errno != errSuccess {
		return errno
	}
	n, errno := d.f.read(ctx, iovs, d.nonblock())
	if errno != errSuccess {
		return errno
	}
	m.putU32(uint32(p[3]), uint32(n))
	return errSuccess
}

func fdWrite(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	if errno := d.need(rightFdWrite); errno != errSuccess {
		return errno
	}
	n, errno := d.f.write(ctx, iovs, d.nonblock(), d.flags&fdflagAppend != 0)
	if errno == errSuccess && n > 0 && d.flags&(fdflagSync|fdflagDsync) != 0 {
		d.f.sync() // what was written stays written: n is the answer
	}
	if errno != errSuccess && n == 0 {
		return errno
	}
	m.putU32(uint32(p[3]), uint32(n))
	return errSuccess
}

// gather joins the first bytes of iovs, at most limit of them, into one
// buffer, and returns it with the iovecs left. A first non-empty iovec of
// limit bytes or more, or the only one, is returned as is, without a copy.
// The limit bounds the host's copy: a guest's iovecs may all point at the
// same region, so their total is not bounded by its memory.
func gather(iovs [][]byte, limit int) (chunk []byte, rest [][]byte) {
	for len(iovs) > 0 && len(iovs[0]) == 0 {
		iovs = iovs[1:]
	}
	switch {
	case len(iovs) == 0:
		return nil, nil
	case len(iovs) == 1 || len(iovs[0]) >= limit:
		return iovs[0], iovs[1:]
	}
	out := make([]byte, 0, min(limit, totalLen(iovs)))
	for len(iovs) > 0 && len(out) < limit {
		n := min(len(iovs[0]), limit-len(out))
		out = append(out, iovs[0][:n]...)
		if n < len(iovs[0]) {
			return out, append([][]byte{iovs[0][n:]}, iovs[1:]...)
		}
		iovs = iovs[1:]
	}
	return out, iovs
}

// totalLen is the sum of the iovecs' lengths, saturating at MaxInt.
func totalLen(iovs [][]byte) int {
	n := 0
	for _, b := range iovs {
		if n += len(b); n < 0 {
			return int(^uint(0) >> 1)
		}
	}
	return n
}

func fdPread(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return positionedIO(s, m, p, rightFdRead, kind.pread)
}

func fdPwrite(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return positionedIO(s, m, p, rightFdWrite, kind.pwrite)
}

// positionedIO does fd_pread and fd_pwrite: params (fd, iovs, iovs_len,
// offset, result pointer); it needs right on the descriptor, has the kind
// move through the iovecs from offset, and stores the byte count.
func positionedIO(s *System, m mem, p []uint64, right uint64, op func(k kind, iovs [][]byte, off int64) (int, Errno)) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	iovs := m.iovecs(uint32(p[1]), uint32(p[2]))
	off := int64(p[3])
	if errno := d.need(right); errno != errSuccess {
		return errno
	}
	if off < 0 {
		return errInval
	}
	n, errno := op(d.f, iovs, off)
	if errno != errSuccess && n == 0 {
		return errno
	}
	m.putU32(uint32(p[4]), uint32(n))
	return errSuccess
}

func fdSeek(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	off, whence := int64(p[1]), uint32(p[2])
	right := rightFdSeek
	if off == 0 && whence == whenceCur {
		right = rightFdTell // lseek(fd, 0, SEEK_CUR) is how C tells
	}
	pos, errno := d.seek(off, whence, right)
	if errno != errSuccess {
		return errno
	}
	m.putU64(uint32(p[3]), uint64(pos))
	return errSuccess
}

func (d *fdesc) seek(off int64, whence uint32, right uint64) (int64, Errno) {
	if errno := d.need(right); errno != errSuccess {
		return 0, errno
	}
	if whence > whenceEnd {
		return 0, errInval
	}
	return d.f.seek(off, int(whence))
}

func fdTell(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	pos, errno := d.seek(0, whenceCur, rightFdTell)
	if errno != errSuccess {
		return errno
	}
	m.putU64(uint32(p[1]), uint64(pos))
	return errSuccess
}

func fdSync(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	return syncWith(s, p, rightFdSync)
}

func fdDatasync(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	return syncWith(s, p, rightFdDatasync)
}

func syncWith(s *System, p []uint64, right uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(right); errno != errSuccess {
		return errno
	}
	return d.f.sync()
}

func fdAdvise(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if uint32(p[3]) > 5 {
		return errInval
	}
	if errno := d.need(rightFdAdvise); errno != errSuccess {
		return errno
	}
	return d.f.advise()
}

func fdAllocate(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdAllocate); errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdWrite); errno != errSuccess {
		return errno
	}
	off, n := int64(p[1]), int64(p[2])
	if off < 0 || n <= 0 || off+n < off {
		return errInval
	}
	return d.f.allocate(off, n)
}

func fdFilestatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	b := m.bytes(uint32(p[1]), 64)
	if errno := d.need(rightFdFilestatGet); errno != errSuccess {
		return errno
	}
	return d.f.filestat(b)
}

func fdFilestatSetSize(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdFilestatSetSize); errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdWrite); errno != errSuccess {
		return errno
	}
	if int64(p[1]) < 0 {
		return errInval
	}
	return d.f.truncate(int64(p[1]))
}

func fdFilestatSetTimes(s *System, _ context.Context, _ engine.Caller, _ mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if errno := d.need(rightFdFilestatSetTimes); errno != errSuccess {
		return errno
	}
	atim, mtim, errno := times(p[1], p[2], uint16(p[3]))
	if errno != errSuccess {
		return errno
	}
	return d.f.setTimes(atim, mtim)
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
