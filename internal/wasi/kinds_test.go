package wasi

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
)

// TestKindRules checks, for each descriptor kind, the errno of the calls
// whose answer depends on the kind: the rules kinds.go keeps in one place.
func TestKindRules(t *testing.T) {
	g := newGuest(t, Options{Files: []config.File{
		{Kind: config.KindStdin}, {Kind: config.KindStdout}, {Kind: config.KindStderr},
		{Kind: config.KindNull},
		{Kind: config.KindSecret, Name: "s", Secret: []byte("secret")},
		{Kind: config.KindListen, Name: "l", Prot: config.ProtTCP, Addr: "127.0.0.1"},
		{Kind: config.KindDir, Name: "/d", Path: t.TempDir()},
	}})
	e, file := g.openAt(6, "f", oflagCreat, rightsFile, false)
	if e != errSuccess {
		t.Fatalf("path_open: errno %d", e)
	}
	iov, buf, ret := g.alloc(8), g.alloc(16), g.alloc(8)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 16)
	fds := []struct {
		name string
		fd   uint64
	}{{"stdin", 0}, {"stdout", 1}, {"null", 3}, {"secret", 4}, {"listener", 5}, {"dir", 6}, {"file", uint64(file)}}
	for _, c := range []struct {
		call string
		args func(fd uint64) []uint64
		want []Errno // in the order of fds
	}{
		{"fd_seek", func(fd uint64) []uint64 { return []uint64{fd, 0, whenceSet, uint64(ret)} },
			[]Errno{errSpipe, errSpipe, errSpipe, errSuccess, errSpipe, errIsdir, errSuccess}},
		{"fd_read", func(fd uint64) []uint64 { return []uint64{fd, uint64(iov), 1, uint64(ret)} },
			[]Errno{errSuccess, errBadf, errSuccess, errSuccess, errNotconn, errIsdir, errSuccess}},
		{"fd_pread", func(fd uint64) []uint64 { return []uint64{fd, uint64(iov), 1, 0, uint64(ret)} },
			[]Errno{errSpipe, errBadf, errSpipe, errSuccess, errSpipe, errIsdir, errSuccess}},
		{"fd_write", func(fd uint64) []uint64 { return []uint64{fd, uint64(iov), 1, uint64(ret)} },
			[]Errno{errBadf, errSuccess, errSuccess, errBadf, errBadf, errIsdir, errSuccess}},
		{"fd_filestat_set_size", func(fd uint64) []uint64 { return []uint64{fd, 0} },
			[]Errno{errBadf, errBadf, errBadf, errBadf, errBadf, errIsdir, errSuccess}},
		{"fd_fdstat_set_flags", func(fd uint64) []uint64 { return []uint64{fd, fdflagAppend} },
			[]Errno{errInval, errInval, errInval, errInval, errInval, errInval, errSuccess}},
		{"fd_sync", func(fd uint64) []uint64 { return []uint64{fd} },
			[]Errno{errInval, errInval, errInval, errInval, errInval, errSuccess, errSuccess}},
	} {
		for i, d := range fds {
			if got := g.call(c.call, c.args(d.fd)...); got != c.want[i] {
				t.Errorf("%s on %s: errno %d, want %d", c.call, d.name, got, c.want[i])
			}
		}
	}
}

// TestFollowAndTimesStayInside attacks the path code of issue 12: a
// path_link that follows symlinks, and setting a symlink's own times,
// must not reach outside the preopen.
func TestFollowAndTimesStayInside(t *testing.T) {
	o, base, data := dirOpts(t, false)
	secret := filepath.Join(base, "secret.txt")
	must(t, os.Symlink("../secret.txt", filepath.Join(data, "up")))
	must(t, os.Symlink(secret, filepath.Join(data, "abs")))
	must(t, os.Symlink("up", filepath.Join(data, "chain")))
	must(t, os.Symlink("../..", filepath.Join(data, "sub", "grandparent")))
	must(t, os.Symlink("loop", filepath.Join(data, "loop")))
	before, err := os.Stat(secret)
	must(t, err)
	g := newGuest(t, o)
	for _, c := range []struct {
		from string
		want Errno
	}{
		{"up", errPerm}, {"abs", errPerm}, {"chain", errPerm},
		{"sub/grandparent/secret.txt", errPerm}, {"loop", errLoop},
	} {
		fp, fl := g.str(c.from)
		tp, tl := g.str("stolen")
		if e := g.call("path_link", 3, lookupSymlinkFollow, fp, fl, 3, tp, tl); e != c.want {
			t.Errorf("path_link follow %q: errno %d, want %d", c.from, e, c.want)
		}
	}
	if _, err := os.Lstat(filepath.Join(data, "stolen")); err == nil {
		t.Error("a link to something outside was made")
	}
	// A symlink's own times (no follow) change the link, not its target;
	// following it out of the preopen is refused.
	pp, pl := g.str("up")
	if e := g.call("path_filestat_set_times", 3, 0, pp, pl, 0, 1e9, fstMtim); e != errSuccess {
		t.Errorf("set times of the link itself: errno %d", e)
	}
	if fi, err := os.Lstat(filepath.Join(data, "up")); err != nil || fi.ModTime().Unix() != 1 {
		t.Errorf("the link's mtime is not 1s: %v %v", fi.ModTime(), err)
	}
	if e := g.call("path_filestat_set_times", 3, lookupSymlinkFollow, pp, pl, 0, 1e9, fstMtim); e == errSuccess {
		t.Error("set times through a link out of the preopen succeeded")
	}
	after, err := os.Stat(secret)
	must(t, err)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Error("the file outside the preopen changed")
	}
	// Rename onto a directory: an empty one is replaced, a full one is not.
	must(t, os.Mkdir(filepath.Join(data, "empty"), 0o755))
	fp, fl := g.str("sub")
	tp, tl := g.str("in.txt")
	if e := g.call("path_rename", 3, fp, fl, 3, tp, tl); e != errNotdir {
		t.Errorf("rename a directory onto a file: errno %d, want ENOTDIR", e)
	}
	tp, tl = g.str("empty")
	if e := g.call("path_rename", 3, fp, fl, 3, tp, tl); e != errSuccess {
		t.Errorf("rename onto an empty directory: errno %d", e)
	}
	if _, err := os.Lstat(filepath.Join(data, "empty", "grandparent")); err != nil {
		t.Errorf("sub was not moved onto empty: %v", err)
	}
}
