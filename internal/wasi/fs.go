package wasi

import (
	"context"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/castellan-dev/castellan/internal/engine"
)

// dirState is an open directory: its handle (for stat) and the listing
// fd_readdir serves by cookie, read again whenever the cookie is 0.
type dirState struct {
	f       *os.File
	entries []dirent
}

type dirent struct {
	name     string
	ino      uint64
	filetype uint8
}

// resolveWrite is resolve for calls that change the file system: a path
// below a read-only preopen is refused with EROFS.
func (s *System) resolveWrite(m mem, fd, ptr, n uint32) (*fdesc, string, Errno) {
	d, rel, errno := s.resolve(m, fd, ptr, n)
	if errno != errSuccess {
		return nil, "", errno
	}
	if d.pre.readOnly {
		return nil, "", errRofs
	}
	return d, rel, errSuccess
}

// resolve turns a guest path relative to directory descriptor fd into a
// path below the preopen's root. The path must stay below fd's directory
// lexically (no absolute paths, no leading ".."); symlinks are resolved by
// os.Root, which refuses anything that leaves the preopen.
func (s *System) resolve(m mem, fd, ptr, n uint32) (*fdesc, string, Errno) {
	d, errno := s.get(fd)
	if errno != errSuccess {
		return nil, "", errno
	}
	if d.dir == nil || d.pre == nil {
		return nil, "", errNotdir
	}
	p := string(m.bytes(ptr, n))
	switch {
	case p == "":
		return nil, "", errNoent
	case strings.IndexByte(p, 0) >= 0:
		return nil, "", errInval
	case strings.HasPrefix(p, "/"):
		return nil, "", errPerm
	case runtime.GOOS == "windows" && (strings.ContainsAny(p, `\:`)):
		return nil, "", errPerm
	}
	clean := path.Clean(p)
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return nil, "", errPerm
	}
	full := path.Join(d.rel, clean)
	if strings.HasSuffix(p, "/") && full != "." {
		full += "/"
	}
	return d, filepath.FromSlash(full), errSuccess
}

// rel2 is resolve for a second path of the same call; both must be in the
// same preopen.
func (s *System) resolve2(m mem, fd1, p1, n1, fd2, p2, n2 uint32) (*preopen, string, string, Errno) {
	d1, a, errno := s.resolve(m, fd1, p1, n1)
	if errno != errSuccess {
		return nil, "", "", errno
	}
	d2, b, errno := s.resolve(m, fd2, p2, n2)
	if errno != errSuccess {
		return nil, "", "", errno
	}
	if d1.pre != d2.pre {
		return nil, "", "", errXdev
	}
	return d1.pre, a, b, errSuccess
}

func pathOpen(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	dirflags, oflags, base, inh, fdflags := uint32(p[1]), uint16(p[4]), p[5], p[6], uint16(p[7])
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[2]), uint32(p[3]))
	if errno != errSuccess {
		return errno
	}
	write := base&rightFdWrite != 0 ||
		oflags&(oflagCreat|oflagTrunc) != 0 || fdflags&fdflagAppend != 0
	if write && d.pre.readOnly {
		return errRofs
	}
	read := base&(rightFdRead|rightFdReaddir) != 0
	flag := os.O_RDONLY
	switch {
	case write && read:
		flag = os.O_RDWR
	case write:
		flag = os.O_WRONLY
	}
	if base&rightFdWrite == 0 && (oflags&oflagTrunc != 0 || fdflags&fdflagAppend != 0) {
		// O_TRUNC or O_APPEND without a write right: open for writing
		// anyway (POSIX allows O_RDONLY|O_TRUNC), keep the rights as asked.
		flag = os.O_RDWR
		if !read {
			flag = os.O_WRONLY
		}
	}
	if base&rightFdWrite == 0 && flag == os.O_RDONLY && oflags&oflagCreat != 0 {
		flag = os.O_RDWR
		if !read {
			flag = os.O_WRONLY
		}
	}
	if oflags&oflagCreat != 0 {
		flag |= os.O_CREATE
	}
	if oflags&oflagExcl != 0 {
		flag |= os.O_EXCL
	}
	if oflags&oflagTrunc != 0 {
		flag |= os.O_TRUNC
	}
	if fdflags&fdflagAppend != 0 {
		flag |= os.O_APPEND
	}
	if fdflags&(fdflagSync|fdflagDsync|fdflagRsync) != 0 {
		flag |= os.O_SYNC
	}
	if oflags&oflagDirectory != 0 && flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC) != 0 {
		if oflags&oflagCreat != 0 {
			return errInval
		}
		return errIsdir
	}
	if dirflags&lookupSymlinkFollow == 0 {
		// O_NOFOLLOW: a symlink as the last component is refused.
		if fi, err := d.pre.root.Lstat(rel); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			if oflags&(oflagCreat|oflagExcl) == oflagCreat|oflagExcl {
				return errExist
			}
			return errLoop
		}
	}
	f, err := d.pre.root.OpenFile(rel, flag, 0o666)
	if err != nil {
		return errnoOf(err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return errnoOf(err)
	}
	nd := &fdesc{pre: d.pre, rel: filepath.ToSlash(strings.TrimSuffix(rel, string(filepath.Separator))), flags: fdflags & (fdflagAppend | fdflagNonblock | fdflagSync | fdflagDsync | fdflagRsync)}
	if nd.rel == "" {
		nd.rel = "."
	}
	switch {
	case fi.IsDir():
		if write {
			f.Close()
			return errIsdir
		}
		nd.filetype = filetypeDirectory
		nd.dir = &dirState{f: f}
		nd.base = base & d.inh & rightsDir
		nd.inh = inh & d.inh
	default:
		if oflags&oflagDirectory != 0 {
			f.Close()
			return errNotdir
		}
		nd.filetype = filetypeOf(fi.Mode())
		nd.file = f
		nd.base = base & d.inh & rightsFile
		nd.inh = 0
	}
	fd, errno := s.alloc(nd)
	if errno != errSuccess {
		nd.close()
		return errno
	}
	m.putU32(uint32(p[8]), fd)
	return errSuccess
}

func pathCreateDirectory(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolveWrite(m, uint32(p[0]), uint32(p[1]), uint32(p[2]))
	if errno != errSuccess {
		return errno
	}
	return errnoOf(d.pre.root.Mkdir(rel, 0o777))
}

func pathFilestatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[2]), uint32(p[3]))
	if errno != errSuccess {
		return errno
	}
	var fi fs.FileInfo
	var err error
	if uint32(p[1])&lookupSymlinkFollow != 0 {
		fi, err = d.pre.root.Stat(rel)
	} else {
		fi, err = d.pre.root.Lstat(rel)
	}
	if err != nil {
		return errnoOf(err)
	}
	putFilestat(m.bytes(uint32(p[4]), 64), fi)
	return errSuccess
}

func pathFilestatSetTimes(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolveWrite(m, uint32(p[0]), uint32(p[2]), uint32(p[3]))
	if errno != errSuccess {
		return errno
	}
	atim, mtim, errno := times(p[4], p[5], uint16(p[6]))
	if errno != errSuccess {
		return errno
	}
	if uint32(p[1])&lookupSymlinkFollow == 0 {
		fi, err := d.pre.root.Lstat(rel)
		if err != nil {
			return errnoOf(err)
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			// os.Root cannot set the times of a link itself.
			return errNotsup
		}
	}
	return errnoOf(d.pre.root.Chtimes(rel, atim, mtim))
}

func pathLink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	// (old_fd, old_flags, old_path, old_len, new_fd, new_path, new_len)
	return twoPaths(s, m, [6]uint64{p[0], p[2], p[3], p[4], p[5], p[6]}, (*os.Root).Link)
}

func pathRename(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	// (fd, old_path, old_len, new_fd, new_path, new_len)
	return twoPaths(s, m, [6]uint64{p[0], p[1], p[2], p[3], p[4], p[5]}, (*os.Root).Rename)
}

// twoPaths resolves (fd, path, len) twice, both within one writable
// preopen, and applies op to the two paths.
func twoPaths(s *System, m mem, p [6]uint64, op func(r *os.Root, oldname, newname string) error) Errno {
	pre, old, nw, errno := s.resolve2(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), uint32(p[3]), uint32(p[4]), uint32(p[5]))
	if errno != errSuccess {
		return errno
	}
	if pre.readOnly {
		return errRofs
	}
	return errnoOf(op(pre.root, old, nw))
}

func pathReadlink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]))
	if errno != errSuccess {
		return errno
	}
	target, err := d.pre.root.Readlink(rel)
	if err != nil {
		return errnoOf(err)
	}
	target = filepath.ToSlash(target)
	buf := m.bytes(uint32(p[3]), uint32(p[4]))
	n := copy(buf, target)
	m.putU32(uint32(p[5]), uint32(n))
	return errSuccess
}

func pathRemoveDirectory(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolveWrite(m, uint32(p[0]), uint32(p[1]), uint32(p[2]))
	if errno != errSuccess {
		return errno
	}
	if filepath.Clean(rel) == "." {
		return errBusy
	}
	fi, err := d.pre.root.Lstat(rel)
	if err != nil {
		return errnoOf(err)
	}
	if !fi.IsDir() {
		return errNotdir
	}
	return errnoOf(d.pre.root.Remove(rel))
}

func pathUnlinkFile(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolveWrite(m, uint32(p[0]), uint32(p[1]), uint32(p[2]))
	if errno != errSuccess {
		return errno
	}
	fi, err := d.pre.root.Lstat(rel)
	if err != nil {
		return errnoOf(err)
	}
	if fi.IsDir() {
		return errIsdir
	}
	if strings.HasSuffix(rel, string(filepath.Separator)) {
		return errNotdir
	}
	return errnoOf(d.pre.root.Remove(rel))
}

func pathSymlink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	target := string(m.bytes(uint32(p[0]), uint32(p[1])))
	d, rel, errno := s.resolveWrite(m, uint32(p[2]), uint32(p[3]), uint32(p[4]))
	if errno != errSuccess {
		return errno
	}
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return errInval
	}
	// The target is stored as given; os.Root refuses to follow it out of
	// the preopen when it is used.
	return errnoOf(d.pre.root.Symlink(filepath.FromSlash(target), rel))
}

func fdReaddir(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	if d.dir == nil {
		return errNotdir
	}
	if d.base&rightFdReaddir == 0 {
		return errBadf
	}
	buf := m.bytes(uint32(p[1]), uint32(p[2]))
	cookie := p[3]
	if cookie == 0 || d.dir.entries == nil {
		entries, err := d.readdir()
		if err != nil {
			return errnoOf(err)
		}
		d.dir.entries = entries
	}
	if cookie > uint64(len(d.dir.entries)) {
		return errInval
	}
	used := 0
	var hdr [24]byte
	for i := int(cookie); i < len(d.dir.entries) && used < len(buf); i++ {
		e := d.dir.entries[i]
		le.PutUint64(hdr[0:], uint64(i+1))
		le.PutUint64(hdr[8:], e.ino)
		le.PutUint32(hdr[16:], uint32(len(e.name)))
		le.PutUint32(hdr[20:], uint32(e.filetype))
		used += copy(buf[used:], hdr[:])
		used += copy(buf[used:], e.name)
	}
	m.putU32(uint32(p[4]), uint32(used))
	return errSuccess
}

// readdir lists the directory: ".", "..", then the entries sorted by name.
func (d *fdesc) readdir() ([]dirent, error) {
	f, err := d.pre.root.Open(filepath.FromSlash(d.rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	list, err := f.ReadDir(-1)
	if err != nil {
		return nil, err
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name() < list[j].Name() })
	out := make([]dirent, 0, len(list)+2)
	var self uint64
	if fi, err := f.Stat(); err == nil {
		self = sysStat(fi).ino
	}
	out = append(out, dirent{name: ".", ino: self, filetype: filetypeDirectory}, dirent{name: "..", filetype: filetypeDirectory})
	for _, e := range list {
		de := dirent{name: e.Name(), filetype: filetypeOf(e.Type())}
		if fi, err := e.Info(); err == nil {
			de.ino = sysStat(fi).ino
		}
		out = append(out, de)
	}
	return out, nil
}

func filetypeOf(mode fs.FileMode) uint8 {
	switch {
	case mode.IsRegular():
		return filetypeRegularFile
	case mode.IsDir():
		return filetypeDirectory
	case mode&fs.ModeSymlink != 0:
		return filetypeSymbolicLink
	case mode&fs.ModeSocket != 0:
		return filetypeSocketStream
	case mode&fs.ModeCharDevice != 0:
		return filetypeCharacterDevice
	case mode&fs.ModeDevice != 0:
		return filetypeBlockDevice
	}
	return filetypeUnknown
}

// statT is the part of a host stat WASI reports beyond fs.FileInfo.
type statT struct {
	dev, ino, nlink uint64
	atim, ctim      int64
}

func putFilestat(b []byte, fi fs.FileInfo) {
	st := sysStat(fi)
	clear(b)
	le.PutUint64(b[0:], st.dev)
	le.PutUint64(b[8:], st.ino)
	b[16] = filetypeOf(fi.Mode())
	le.PutUint64(b[24:], st.nlink)
	le.PutUint64(b[32:], uint64(fi.Size()))
	mtim := fi.ModTime().UnixNano()
	if st.atim == 0 {
		st.atim = mtim
	}
	if st.ctim == 0 {
		st.ctim = mtim
	}
	le.PutUint64(b[40:], uint64(st.atim))
	le.PutUint64(b[48:], uint64(mtim))
	le.PutUint64(b[56:], uint64(st.ctim))
}
