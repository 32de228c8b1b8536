package wasi

import (
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
