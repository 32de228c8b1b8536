package wasi

import (
	"context"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/castellan-dev/castellan/internal/engine"
)

// pathMax bounds a guest path, as Linux's PATH_MAX (4096 with its NUL):
// a longer one is ENAMETOOLONG before the host copies it, so that a path
// as long as the guest's memory does not double what the guest holds.
const pathMax = 4096

type dirent struct {
	name     string
	ino      uint64
	filetype uint8
}

// resolve turns a guest path relative to directory descriptor fd into a
// path below the preopen's root, for a call that needs right on fd (and
// that changes the file system when write is set: EROFS below a read-only
// preopen). The path must stay below fd's directory lexically (no absolute
// paths, no leading ".."); symlinks are resolved by os.Root, which refuses
// anything that leaves the preopen.
func (s *System) resolve(m mem, fd, ptr, n uint32, right uint64, write bool) (*dirKind, string, Errno) {
	d, errno := s.get(fd)
	if errno != errSuccess {
		return nil, "", errno
	}
	dir := dirOf(d)
	if dir == nil {
		return nil, "", errNotdir
	}
	if n >= pathMax {
		return nil, "", errNametoolong
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
	if write && dir.pre.readOnly {
		return nil, "", errRofs
	}
	if errno := d.need(right); errno != errSuccess {
		return nil, "", errno
	}
	full := path.Join(dir.rel, clean)
	if strings.HasSuffix(p, "/") && full != "." {
		full += "/"
	}
	return dir, filepath.FromSlash(full), errSuccess
}

// resolve2 is resolve for the two paths of path_link and path_rename;
// both must be in the same preopen, and it must be writable.
func (s *System) resolve2(m mem, p [6]uint64, right1, right2 uint64) (*preopen, string, string, Errno) {
	d1, a, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), right1, true)
	if errno != errSuccess {
		return nil, "", "", errno
	}
	d2, b, errno := s.resolve(m, uint32(p[3]), uint32(p[4]), uint32(p[5]), right2, true)
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
	write := base&rightFdWrite != 0 ||
		oflags&(oflagCreat|oflagTrunc) != 0 || fdflags&fdflagAppend != 0
	right := rightPathOpen
	if oflags&oflagCreat != 0 {
		right |= rightPathCreateFile
	}
	if oflags&oflagTrunc != 0 {
		right |= rightPathFilestatSetSize
	}
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[2]), uint32(p[3]), right, write)
	if errno != errSuccess {
		return errno
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
	// No O_APPEND on the host file: append is the descriptor's flag (see
	// fileKind).
	if fdflags&(fdflagSync|fdflagDsync|fdflagRsync) != 0 {
		flag |= os.O_SYNC
	}
	if oflags&oflagDirectory != 0 && flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC) != 0 {
		if oflags&oflagCreat != 0 {
			return errInval
		}
		return errIsdir
	}
	// A preopen is nodev, as a VM keep's volume mounts are: the open of a
	// device node acts on the host's device, outside any device rules a
	// container has (a pod's sibling container, root with CAP_MKNOD, can
	// make one of the node's disk in a shared volume). Looked at before
	// the open; a node swapped in between is refused after it, unread.
	stat := d.pre.root.Stat
	if dirflags&lookupSymlinkFollow == 0 {
		stat = d.pre.root.Lstat
	}
	if pre, err := stat(rel); err == nil {
		if pre.Mode()&fs.ModeSymlink != 0 {
			// O_NOFOLLOW: a symlink as the last component is refused.
			if oflags&(oflagCreat|oflagExcl) == oflagCreat|oflagExcl {
				return errExist
			}
			return errLoop
		}
		if isDevice(pre.Mode()) {
			return errAcces
		}
	}
	f, err := d.pre.root.OpenFile(rel, flag, 0o666)
	if err != nil {
		return errnoOf(err)
	}
	fi, err := f.Stat()
	if err == nil && isDevice(fi.Mode()) {
		err = syscall.EACCES
	}
	if err != nil {
		f.Close()
		return errnoOf(err)
	}
	nrel := filepath.ToSlash(strings.TrimSuffix(rel, string(filepath.Separator)))
	if nrel == "" {
		nrel = "."
	}
	nd := &fdesc{flags: fdflags & (fdflagAppend | fdflagNonblock | fdflagSync | fdflagDsync | fdflagRsync)}
	dd, _ := s.get(uint32(p[0])) // the directory's descriptor: what nd inherits
	switch {
	case fi.IsDir():
		if write {
			f.Close()
			return errIsdir
		}
		nd.f = &dirKind{hostNode: hostNode{noKind{filetypeDirectory}, f, d.pre, nrel}}
		nd.base = base & dd.inh & rightsDir
		nd.inh = inh & dd.inh
	default:
		if oflags&oflagDirectory != 0 {
			f.Close()
			return errNotdir
		}
		nd.f = &fileKind{hostNode{noKind{filetypeOf(fi.Mode())}, f, d.pre, nrel}}
		nd.base = base & dd.inh & rightsFile
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
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), rightPathCreateDirectory, true)
	if errno != errSuccess {
		return errno
	}
	return errnoOf(d.pre.root.Mkdir(rel, 0o777))
}

func pathFilestatGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[2]), uint32(p[3]), rightPathFilestatGet, false)
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
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[2]), uint32(p[3]), rightPathFilestatSetTimes, true)
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
			// The link itself: os.Root has no Lchtimes.
			return errnoOf(lchtimes(d.pre.root, rel, atim, mtim))
		}
	}
	return errnoOf(d.pre.root.Chtimes(rel, atim, mtim))
}

func pathLink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	// (old_fd, old_flags, old_path, old_len, new_fd, new_path, new_len)
	pre, old, nw, errno := s.resolve2(m, [6]uint64{p[0], p[2], p[3], p[4], p[5], p[6]}, rightPathLinkSource, rightPathLinkTarget)
	if errno != errSuccess {
		return errno
	}
	if uint32(p[1])&lookupSymlinkFollow != 0 {
		// linkat(AT_SYMLINK_FOLLOW): link what old names, following
		// symlinks inside the preopen; a dangling one is ENOENT.
		old, errno = followLinks(pre.root, old)
		if errno != errSuccess {
			return errno
		}
	}
	return errnoOf(pre.root.Link(old, nw))
}

// maxSymlinks bounds followLinks, as Linux's MAXSYMLINKS.
const maxSymlinks = 40

// followLinks resolves the symlinks of rel's last component inside root:
// each target must stay lexically inside the root (EPERM otherwise, as
// for guest paths), and must exist (ENOENT).
func followLinks(root *os.Root, rel string) (string, Errno) {
	cur := filepath.ToSlash(filepath.Clean(rel))
	for range maxSymlinks {
		fi, err := root.Lstat(filepath.FromSlash(cur))
		if err != nil {
			return "", errnoOf(err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return filepath.FromSlash(cur), errSuccess
		}
		target, err := root.Readlink(filepath.FromSlash(cur))
		if err != nil {
			return "", errnoOf(err)
		}
		target = filepath.ToSlash(target)
		if path.IsAbs(target) {
			return "", errPerm
		}
		cur = path.Join(path.Dir(cur), target)
		if cur == ".." || strings.HasPrefix(cur, "../") {
			return "", errPerm
		}
	}
	return "", errLoop
}

// pathRename is rename(2) inside one preopen. Go's os.Root.Rename refuses
// to replace a directory (EEXIST); POSIX replaces an empty one and refuses
// a non-empty one with ENOTEMPTY, which pathRename does by removing the
// empty target first (not atomic, unlike renameat).
func pathRename(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	// (fd, old_path, old_len, new_fd, new_path, new_len)
	pre, old, nw, errno := s.resolve2(m, [6]uint64{p[0], p[1], p[2], p[3], p[4], p[5]}, rightPathRenameSource, rightPathRenameTarget)
	if errno != errSuccess {
		return errno
	}
	if tfi, err := pre.root.Lstat(nw); err == nil && tfi.IsDir() {
		sfi, err := pre.root.Lstat(old)
		if err != nil {
			return errnoOf(err)
		}
		co, cn := filepath.Clean(old), filepath.Clean(nw)
		switch {
		case !sfi.IsDir():
			return errIsdir
		case co == cn || os.SameFile(sfi, tfi):
			return errSuccess
		case strings.HasPrefix(cn, co+string(filepath.Separator)):
			return errInval // into itself
		}
		if errno := emptyDir(pre.root, nw); errno != errSuccess {
			return errno
		}
		if err := pre.root.Remove(nw); err != nil {
			return errnoOf(err)
		}
	}
	return errnoOf(pre.root.Rename(old, nw))
}

// emptyDir is ENOTEMPTY unless the directory rel has no entries.
func emptyDir(root *os.Root, rel string) Errno {
	f, err := root.Open(rel)
	if err != nil {
		return errnoOf(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if len(names) > 0 {
		return errNotempty
	}
	if err != nil && err != io.EOF {
		return errnoOf(err)
	}
	return errSuccess
}

func pathReadlink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), rightPathReadlink, false)
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
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), rightPathRemoveDirectory, true)
	if errno != errSuccess {
		return errno
	}
	// rmdir(2): a last component "." is EINVAL, whatever directory it
	// names (the guest's own, not only the preopen).
	if guest := strings.TrimRight(string(m.bytes(uint32(p[1]), uint32(p[2]))), "/"); guest == "." || strings.HasSuffix(guest, "/.") {
		return errInval
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
	d, rel, errno := s.resolve(m, uint32(p[0]), uint32(p[1]), uint32(p[2]), rightPathUnlinkFile, true)
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

// pathSymlink refuses absolute targets (EPERM), as wasmtime and wazero
// do: the runtime would never follow them, and a link to a host path
// should not be left in the host folder.
func pathSymlink(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	if uint32(p[1]) >= pathMax {
		return errNametoolong
	}
	target := string(m.bytes(uint32(p[0]), uint32(p[1])))
	d, rel, errno := s.resolve(m, uint32(p[2]), uint32(p[3]), uint32(p[4]), rightPathSymlink, true)
	if errno != errSuccess {
		return errno
	}
	switch {
	case target == "" || strings.IndexByte(target, 0) >= 0:
		return errInval
	case strings.HasPrefix(target, "/"):
		return errPerm
	case runtime.GOOS == "windows" && strings.ContainsAny(target, `\:`):
		return errPerm
	}
	// A relative target is stored as given; os.Root refuses to follow it
	// out of the preopen when it is used.
	return errnoOf(d.pre.root.Symlink(filepath.FromSlash(target), rel))
}

func fdReaddir(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	d, errno := s.get(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	dir := dirOf(d)
	if dir == nil {
		return errNotdir
	}
	if d.base&rightFdReaddir == 0 {
		return errBadf
	}
	buf := m.bytes(uint32(p[1]), uint32(p[2]))
	cookie := p[3]
	if cookie == 0 || dir.entries == nil {
		entries, err := dir.readdir()
		if err != nil {
			return errnoOf(err)
		}
		dir.entries = entries
	}
	if cookie > uint64(len(dir.entries)) {
		return errInval
	}
	used := 0
	var hdr [24]byte
	for i := int(cookie); i < len(dir.entries) && used < len(buf); i++ {
		e := dir.entries[i]
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
func (d *dirKind) readdir() ([]dirent, error) {
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

// isDevice is a character or block device's mode.
func isDevice(mode fs.FileMode) bool { return mode&fs.ModeDevice != 0 }

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
