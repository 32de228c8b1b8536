package wasi

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
)

// guest is a fake engine.Caller: a 1 MiB linear memory and a bump
// allocator, to call the host functions directly.
type guest struct {
	t    testing.TB
	s    *System
	mem  []byte
	next uint32
}

var _ engine.Caller = (*guest)(nil)

type exited uint32

func (g *guest) Memory() []byte   { return g.mem }
func (g *guest) Exit(code uint32) { panic(exited(code)) }

func newGuest(t testing.TB, o Options) *guest {
	t.Helper()
	s, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &guest{t: t, s: s, mem: make([]byte, 1<<20), next: 1024}
}

// alloc reserves n bytes, 8-aligned, and returns their address.
func (g *guest) alloc(n int) uint32 {
	p := g.next
	g.next += uint32(n+7) &^ 7
	return p
}

// str places s in memory and returns (ptr, len).
func (g *guest) str(s string) (uint64, uint64) {
	p := g.alloc(len(s))
	copy(g.mem[p:], s)
	return uint64(p), uint64(len(s))
}

func (g *guest) call(name string, args ...uint64) Errno {
	g.t.Helper()
	for _, f := range functions {
		if f.name == name {
			if len(args) != len(f.params) {
				g.t.Fatalf("%s takes %d params, got %d", name, len(f.params), len(args))
			}
			stack := make([]uint64, max(len(args), 1))
			copy(stack, args)
			return g.s.call(context.Background(), g, f.fn, stack)
		}
	}
	g.t.Fatalf("no function %s", name)
	return 0
}

func (g *guest) u32(p uint32) uint32 { return le.Uint32(g.mem[p:]) }

// openAt calls path_open on directory descriptor dirfd and returns the
// errno and the new descriptor.
func (g *guest) openAt(dirfd uint64, path string, oflags uint64, rights uint64, follow bool) (Errno, uint32) {
	g.t.Helper()
	pp, pl := g.str(path)
	ret := g.alloc(4)
	var df uint64
	if follow {
		df = lookupSymlinkFollow
	}
	e := g.call("path_open", dirfd, df, pp, pl, oflags, rights, rights, 0, uint64(ret))
	return e, g.u32(ret)
}

func TestAllFunctions(t *testing.T) {
	if len(functions) != 46 {
		t.Errorf("%d functions, want the 46 of wasi_snapshot_preview1", len(functions))
	}
	seen := map[string]bool{}
	for _, f := range functions {
		if seen[f.name] {
			t.Errorf("%s twice", f.name)
		}
		seen[f.name] = true
	}
}

func dirOpts(t *testing.T, ro bool) (Options, string, string) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	must(t, os.Mkdir(data, 0o755))
	must(t, os.WriteFile(filepath.Join(base, "secret.txt"), []byte("secret"), 0o644))
	must(t, os.WriteFile(filepath.Join(data, "in.txt"), []byte("inside"), 0o644))
	must(t, os.Mkdir(filepath.Join(data, "sub"), 0o755))
	files := append(config.Default().Files, config.File{Kind: config.KindDir, Name: "/data", Path: data, ReadOnly: ro})
	return Options{Files: files}, base, data
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestPathEscapes(t *testing.T) {
	o, base, data := dirOpts(t, false)
	must(t, os.Symlink("../secret.txt", filepath.Join(data, "up")))
	must(t, os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(data, "abs")))
	must(t, os.Symlink("up", filepath.Join(data, "chain1")))
	must(t, os.Symlink("chain1", filepath.Join(data, "chain2")))
	must(t, os.Symlink("..", filepath.Join(data, "sub", "parent")))
	must(t, os.Symlink("../..", filepath.Join(data, "sub", "grandparent")))
	g := newGuest(t, o)
	read := rightFdRead | rightFdSeek | rightFdFilestatGet
	for _, path := range []string{
		"../secret.txt", "sub/../../secret.txt", "/etc/passwd", "/secret.txt",
		"up", "abs", "chain2", "sub/grandparent/secret.txt", "sub/parent/../secret.txt",
	} {
		for _, follow := range []bool{true, false} {
			e, _ := g.openAt(3, path, 0, read, follow)
			if e == errSuccess {
				t.Errorf("path_open(%q, follow=%v) succeeded", path, follow)
			}
		}
		pp, pl := g.str(path)
		if e := g.call("path_filestat_get", 3, lookupSymlinkFollow, pp, pl, uint64(g.alloc(64))); e == errSuccess {
			t.Errorf("path_filestat_get(%q) succeeded", path)
		}
	}
	// A symlink to the preopen's parent's file can be made (it is only
	// a string) but not used; creating through it is refused too.
	e, _ := g.openAt(3, "up", oflagCreat|oflagTrunc, rightFdWrite, true)
	if e == errSuccess {
		t.Error("creating through a symlink that leaves the preopen succeeded")
	}
	// Rename and link out of the root, or onto a symlink's target outside.
	for _, tc := range []struct{ fn, from, to string }{
		{"path_rename", "in.txt", "../moved.txt"},
		{"path_rename", "in.txt", "/tmp/moved.txt"},
		{"path_rename", "in.txt", "sub/grandparent/moved.txt"},
		{"path_rename", "../secret.txt", "stolen.txt"},
		{"path_link", "in.txt", "../linked.txt"},
	} {
		fp, fl := g.str(tc.from)
		tp, tl := g.str(tc.to)
		var e Errno
		if tc.fn == "path_rename" {
			e = g.call(tc.fn, 3, fp, fl, 3, tp, tl)
		} else {
			e = g.call(tc.fn, 3, lookupSymlinkFollow, fp, fl, 3, tp, tl)
		}
		if e == errSuccess {
			t.Errorf("%s(%q, %q) succeeded", tc.fn, tc.from, tc.to)
		}
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 2 {
		t.Errorf("the preopen's parent changed: %v", ents)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "secret.txt")); string(b) != "secret" {
		t.Errorf("secret.txt changed: %q", b)
	}
	// Inside the preopen, the same calls work.
	if e, _ := g.openAt(3, "sub/parent/in.txt", 0, read, true); e != errSuccess {
		t.Errorf("path_open through an inner symlink: errno %d", e)
	}
	fp, fl := g.str("in.txt")
	tp, tl := g.str("sub/moved.txt")
	if e := g.call("path_rename", 3, fp, fl, 3, tp, tl); e != errSuccess {
		t.Errorf("path_rename inside: errno %d", e)
	}
}

func TestReadOnlyPreopen(t *testing.T) {
	o, _, data := dirOpts(t, true)
	g := newGuest(t, o)
	if e, _ := g.openAt(3, "in.txt", 0, rightFdRead, true); e != errSuccess {
		t.Fatalf("reading: errno %d", e)
	}
	if e, _ := g.openAt(3, "in.txt", 0, rightFdRead|rightFdWrite, true); e != errRofs {
		t.Errorf("opening for writing: errno %d, want EROFS", e)
	}
	if e, _ := g.openAt(3, "new.txt", oflagCreat, rightFdRead, true); e != errRofs {
		t.Errorf("creating: errno %d, want EROFS", e)
	}
	pp, pl := g.str("in.txt")
	if e := g.call("path_unlink_file", 3, pp, pl); e != errRofs {
		t.Errorf("unlink: errno %d", e)
	}
	dp, dl := g.str("newdir")
	if e := g.call("path_create_directory", 3, dp, dl); e != errRofs {
		t.Errorf("mkdir: errno %d", e)
	}
	st := g.alloc(24)
	g.call("fd_fdstat_get", 3, uint64(st))
	if base := le.Uint64(g.mem[st+8:]); base&rightPathCreateFile != 0 {
		t.Error("a read-only preopen has the right to create files")
	}
	// Every other way to change something below it.
	for _, tc := range []struct {
		oflags uint64
		rights uint64
	}{
		{oflagTrunc, rightFdRead},
		{oflagTrunc, rightFdRead | rightFdFilestatSetSize},
		{oflagCreat | oflagExcl, rightFdRead},
		{0, rightFdRead | rightFdAllocate | rightFdFilestatSetSize | rightFdFilestatSetTimes},
	} {
		e, fd := g.openAt(3, "in.txt", tc.oflags, tc.rights, true)
		if tc.oflags != 0 {
			if e != errRofs {
				t.Errorf("path_open(oflags %#x): errno %d, want EROFS", tc.oflags, e)
			}
			continue
		}
		if e != errSuccess {
			t.Fatalf("path_open for reading: errno %d", e)
		}
		if e := g.call("fd_allocate", uint64(fd), 0, 100); e == errSuccess {
			t.Error("fd_allocate succeeded")
		}
		if e := g.call("fd_filestat_set_size", uint64(fd), 0); e == errSuccess {
			t.Error("fd_filestat_set_size succeeded")
		}
		if e := g.call("fd_filestat_set_times", uint64(fd), 0, 1, fstMtim); e == errSuccess {
			t.Error("fd_filestat_set_times succeeded")
		}
		if e := g.call("fd_fdstat_set_flags", uint64(fd), fdflagAppend); e == errSuccess {
			iv := g.alloc(8)
			buf, n := g.str("x")
			le.PutUint32(g.mem[iv:], uint32(buf))
			le.PutUint32(g.mem[iv+4:], uint32(n))
			if e := g.call("fd_write", uint64(fd), uint64(iv), 1, uint64(g.alloc(4))); e == errSuccess {
				t.Error("fd_write after fd_fdstat_set_flags(append) succeeded")
			}
		}
	}
	if e := g.call("fd_filestat_set_times", 3, 0, 1, fstMtim); e != errRofs && e != errNotcapable {
		t.Errorf("fd_filestat_set_times on the preopen: errno %d", e)
	}
	sp, sl := g.str("sub")
	np, nl := g.str("sub/moved.txt")
	lp, ll := g.str("up")
	for _, tc := range []struct {
		fn   string
		args []uint64
	}{
		{"path_filestat_set_times", []uint64{3, 0, pp, pl, 0, 1, fstMtim}},
		{"path_rename", []uint64{3, pp, pl, 3, np, nl}},
		{"path_link", []uint64{3, 0, pp, pl, 3, np, nl}},
		{"path_symlink", []uint64{pp, pl, 3, lp, ll}},
		{"path_remove_directory", []uint64{3, sp, sl}},
	} {
		if e := g.call(tc.fn, tc.args...); e != errRofs {
			t.Errorf("%s: errno %d, want EROFS", tc.fn, e)
		}
	}
	ents, _ := os.ReadDir(data)
	if len(ents) != 2 {
		t.Errorf("read-only preopen changed: %v", ents)
	}
	if fi, err := os.Stat(filepath.Join(data, "in.txt")); err != nil || fi.Size() != int64(len("inside")) || fi.ModTime().Unix() < 1000 {
		t.Errorf("in.txt changed: %v %v", fi, err)
	}
}

func TestFault(t *testing.T) {
	o, _, _ := dirOpts(t, false)
	o.Args, o.Env = []string{"main.wasm"}, []string{"A=b"}
	g := newGuest(t, o)
	end := uint64(len(g.mem))
	for _, tc := range []struct {
		name string
		args []uint64
	}{
		{"args_sizes_get", []uint64{end, 0}},
		{"args_get", []uint64{end - 2, 0}},
		{"environ_get", []uint64{0, end}},
		{"clock_time_get", []uint64{0, 0, end - 4}},
		{"random_get", []uint64{end - 10, 11}},
		{"random_get", []uint64{0xffffffff, 0xffffffff}},
		{"fd_write", []uint64{1, end - 4, 1, 0}},
		{"fd_write", []uint64{1, 0xfffffff8, 0xffffffff, 0}},
		{"fd_fdstat_get", []uint64{1, end - 1}},
		{"fd_prestat_dir_name", []uint64{3, end, 5}},
		{"path_open", []uint64{3, 0, end - 1, 10, 0, 0, 0, 0, 0}},
		{"poll_oneoff", []uint64{end - 40, 0, 1, 0}},
		{"poll_oneoff", []uint64{0, 0, 0x10000000, 0}},
		{"fd_readdir", []uint64{3, end - 10, 100, 0, 0}},
	} {
		g.mem = make([]byte, len(g.mem))
		// Make valid iovecs point out of range where a test wants it.
		le.PutUint32(g.mem[0:], uint32(end-2))
		le.PutUint32(g.mem[4:], 100)
		if e := g.call(tc.name, tc.args...); e != errFault && e != errInval {
			t.Errorf("%s%v: errno %d, want EFAULT", tc.name, tc.args, e)
		}
	}
	// An iovec pointing out of memory.
	if e := g.call("fd_write", 1, 0, 1, 8); e != errFault {
		t.Errorf("fd_write with an iovec out of memory: errno %d", e)
	}
}

func TestFdTable(t *testing.T) {
	var out bytes.Buffer
	o, _, _ := dirOpts(t, false)
	o.Stdout = &out
	o.MaxOpenFiles = 6
	g := newGuest(t, o)
	// 4 open; two more fit, then EMFILE.
	var fds []uint32
	for i := 0; i < 2; i++ {
		e, fd := g.openAt(3, "in.txt", 0, rightFdRead, true)
		if e != errSuccess {
			t.Fatalf("open %d: errno %d", i, e)
		}
		fds = append(fds, fd)
	}
	if e, _ := g.openAt(3, "in.txt", 0, rightFdRead, true); e != errMfile {
		t.Errorf("open over the limit: errno %d, want EMFILE", e)
	}
	if fds[0] != 4 || fds[1] != 5 {
		t.Errorf("fds %v, want [4 5]", fds)
	}
	// Renumber 5 onto 1 (stdout): reading 1 now reads the file.
	if e := g.call("fd_renumber", 5, 1); e != errSuccess {
		t.Fatalf("fd_renumber: %d", e)
	}
	if e := g.call("fd_close", 5); e != errBadf {
		t.Errorf("closing the old number: errno %d, want EBADF", e)
	}
	iov := g.alloc(8)
	buf := g.alloc(16)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 16)
	nread := g.alloc(4)
	if e := g.call("fd_read", 1, uint64(iov), 1, uint64(nread)); e != errSuccess || string(g.mem[buf:buf+g.u32(nread)]) != "inside" {
		t.Errorf("read renumbered fd: errno %d, %q", e, g.mem[buf:buf+g.u32(nread)])
	}
	// A slot is free again.
	if e, fd := g.openAt(3, "in.txt", 0, rightFdRead, true); e != errSuccess || fd != 5 {
		t.Errorf("open after renumber: errno %d, fd %d", e, fd)
	}
	if e := g.call("fd_close", 99); e != errBadf {
		t.Errorf("fd_close(99): %d", e)
	}
}

func TestPollClockAndStdin(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	g := newGuest(t, Options{Files: config.Default().Files, Stdin: pr})
	// Subscriptions: stdin readable, and a 10 ms relative clock.
	in := g.alloc(2 * subscriptionSize)
	out := g.alloc(2 * eventSize)
	nev := g.alloc(4)
	sub := g.mem[in:]
	le.PutUint64(sub[0:], 1)
	sub[8] = eventtypeFdRead
	le.PutUint32(sub[16:], 0)
	sub = g.mem[in+subscriptionSize:]
	le.PutUint64(sub[0:], 2)
	sub[8] = eventtypeClock
	le.PutUint32(sub[16:], clockMonotonic)
	le.PutUint64(sub[24:], uint64(10*time.Millisecond))
	start := time.Now()
	if e := g.call("poll_oneoff", uint64(in), uint64(out), 2, uint64(nev)); e != errSuccess {
		t.Fatal(e)
	}
	if g.u32(nev) != 1 || le.Uint64(g.mem[out:]) != 2 || time.Since(start) < 10*time.Millisecond {
		t.Fatalf("first poll: %d events, userdata %d", g.u32(nev), le.Uint64(g.mem[out:]))
	}
	// Now stdin gets data: the poll returns the read event.
	go pw.Write([]byte("hi"))
	le.PutUint64(g.mem[in+subscriptionSize+24:], uint64(time.Hour))
	if e := g.call("poll_oneoff", uint64(in), uint64(out), 2, uint64(nev)); e != errSuccess {
		t.Fatal(e)
	}
	if g.u32(nev) != 1 || le.Uint64(g.mem[out:]) != 1 || le.Uint64(g.mem[out+16:]) != 2 {
		t.Fatalf("second poll: %d events, userdata %d, nbytes %d", g.u32(nev), le.Uint64(g.mem[out:]), le.Uint64(g.mem[out+16:]))
	}
	// A nonblocking read gets the bytes, then EAGAIN.
	g.call("fd_fdstat_set_flags", 0, fdflagNonblock)
	iov := g.alloc(8)
	buf := g.alloc(8)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 8)
	n := g.alloc(4)
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || string(g.mem[buf:buf+g.u32(n)]) != "hi" {
		t.Fatalf("read: errno %d, %q", e, g.mem[buf:buf+g.u32(n)])
	}
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errAgain {
		t.Fatalf("second nonblocking read: errno %d, want EAGAIN", e)
	}
	// EOF: the poll reports a hangup, the read returns 0.
	pw.Close()
	if e := g.call("poll_oneoff", uint64(in), uint64(out), 1, uint64(nev)); e != errSuccess {
		t.Fatal(e)
	}
	if flags := le.Uint16(g.mem[out+24:]); flags&eventFdReadwriteHangup == 0 {
		t.Errorf("no hangup at EOF: flags %d", flags)
	}
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || g.u32(n) != 0 {
		t.Fatalf("read at EOF: errno %d, n %d", e, g.u32(n))
	}
}

func TestEnvArgsExit(t *testing.T) {
	g := newGuest(t, Options{Args: []string{"main.wasm", "a"}, Env: []string{"FD_COUNT=0", "X=y"}})
	cnt, size := g.alloc(4), g.alloc(4)
	g.call("environ_sizes_get", uint64(cnt), uint64(size))
	if g.u32(cnt) != 2 || g.u32(size) != uint32(len("FD_COUNT=0")+1+len("X=y")+1) {
		t.Errorf("environ sizes %d %d", g.u32(cnt), g.u32(size))
	}
	ptrs, buf := g.alloc(8), g.alloc(64)
	g.call("args_get", uint64(ptrs), uint64(buf))
	if got := string(g.mem[buf : buf+len32("main.wasm a ")]); got != "main.wasm\x00a\x00" {
		t.Errorf("args %q", got)
	}
	defer func() {
		if r := recover(); r != exited(42) {
			t.Errorf("proc_exit: recovered %v", r)
		}
	}()
	g.call("proc_exit", 42)
}

func len32(s string) uint32 { return uint32(len(s)) }

func TestNullAndUnknownFd(t *testing.T) {
	g := newGuest(t, Options{Files: []config.File{{Kind: config.KindNull, Name: "null"}}})
	iov := g.alloc(8)
	le.PutUint32(g.mem[iov:], 0)
	le.PutUint32(g.mem[iov+4:], 5)
	n := g.alloc(4)
	if e := g.call("fd_write", 0, uint64(iov), 1, uint64(n)); e != errSuccess || g.u32(n) != 5 {
		t.Errorf("null write: %d %d", e, g.u32(n))
	}
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || g.u32(n) != 0 {
		t.Errorf("null read: %d %d", e, g.u32(n))
	}
	if e := g.call("fd_write", 7, uint64(iov), 1, uint64(n)); e != errBadf {
		t.Errorf("write to fd 7: %d", e)
	}
	if e := g.call("sock_accept", 0, 0, uint64(n)); e != errNotsock {
		t.Errorf("accept on null: %d", e)
	}
}

func TestListenerNonblockAndClose(t *testing.T) {
	files := append(config.Default().Files, config.File{Kind: config.KindListen, Name: "l", Prot: "tcp", Addr: "127.0.0.1"})
	var addr string
	g := newGuest(t, Options{Files: files, OnListen: func(_ string, a net.Addr) { addr = a.String() }})
	ret := g.alloc(4)
	if e := g.call("sock_accept", 3, 0, uint64(ret)); e != errAgain {
		t.Fatalf("accept with nothing pending on a nonblocking listener: %d", e)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Clear NONBLOCK: accept now waits for the connection.
	if e := g.call("fd_fdstat_set_flags", 3, 0); e != errSuccess {
		t.Fatal(e)
	}
	if e := g.call("sock_accept", 3, 0, uint64(ret)); e != errSuccess {
		t.Fatalf("blocking accept: %d", e)
	}
	fd := g.u32(ret)
	st := g.alloc(24)
	g.call("fd_fdstat_get", uint64(fd), uint64(st))
	if g.mem[st] != filetypeSocketStream {
		t.Errorf("accepted filetype %d", g.mem[st])
	}
	io.WriteString(c, "abc")
	go io.WriteString(c, "defgh")
	iov, buf, n := g.alloc(8), g.alloc(8), g.alloc(4)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 8)
	flags := g.alloc(4)
	if e := g.call("sock_recv", uint64(fd), uint64(iov), 1, riflagRecvWaitall, uint64(n), uint64(flags)); e != errSuccess {
		t.Fatal(e)
	}
	// WAITALL with 8 bytes wanted waits for both writes.
	if string(g.mem[buf:buf+g.u32(n)]) != "abcdefgh" {
		t.Errorf("recv %q", g.mem[buf:buf+g.u32(n)])
	}
	g.s.Close()
	if e := g.call("sock_accept", 3, 0, uint64(ret)); e != errBadf {
		t.Errorf("accept after close: %d", e)
	}
}

func TestSlowPeerDoesNotBlockWrites(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	files := append(config.Default().Files, config.File{Kind: config.KindConnect, Name: "c", Prot: "tcp", Host: "127.0.0.1", Port: port})
	g := newGuest(t, Options{Files: files})
	peer := <-accepted
	defer peer.Close()
	// The connect descriptor starts non-blocking: writes fill the buffer
	// (and the kernel's) until EAGAIN, without blocking.
	chunk := 64 << 10
	buf := g.alloc(chunk)
	iov := g.alloc(8)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], uint32(chunk))
	n := g.alloc(4)
	written := 0
	for i := 0; ; i++ {
		e := g.call("fd_write", 3, uint64(iov), 1, uint64(n))
		if e == errAgain {
			break
		}
		if e != errSuccess {
			t.Fatalf("write %d: errno %d", i, e)
		}
		written += int(g.u32(n))
		if i > 100000 {
			t.Fatal("writes never returned EAGAIN")
		}
	}
	// FD_WRITE is not ready; once the peer reads everything, it is.
	in, out, nev := g.alloc(subscriptionSize), g.alloc(eventSize), g.alloc(4)
	sub := g.mem[in:]
	le.PutUint64(sub[0:], 7)
	sub[8] = eventtypeFdWrite
	le.PutUint32(sub[16:], 3)
	got := make(chan int, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(peer, int64(written)))
		got <- len(b)
	}()
	if e := g.call("poll_oneoff", uint64(in), uint64(out), 1, uint64(nev)); e != errSuccess || g.u32(nev) != 1 || le.Uint64(g.mem[out:]) != 7 {
		t.Fatalf("poll for FD_WRITE: errno %d, %d events", e, g.u32(nev))
	}
	if r := <-got; r != written {
		t.Fatalf("peer read %d bytes, %d written", r, written)
	}
	// Closing flushes what is buffered; the peer sees the end.
	if e := g.call("fd_write", 3, uint64(iov), 1, uint64(n)); e != errSuccess {
		t.Fatalf("write after drain: %d", e)
	}
	last := int(g.u32(n))
	if e := g.call("fd_close", 3); e != errSuccess {
		t.Fatal(e)
	}
	b, err := io.ReadAll(peer)
	if err != nil || len(b) != last {
		t.Fatalf("after close the peer read %d bytes (%v), want %d", len(b), err, last)
	}
}

func TestReaddirCookies(t *testing.T) {
	o, _, data := dirOpts(t, false)
	want := map[string]bool{".": true, "..": true, "in.txt": true, "sub": true}
	for i := 0; i < 300; i++ {
		name := "file-with-a-longish-name-" + strings.Repeat("x", i%17) + "-" + strconv.Itoa(i)
		must(t, os.WriteFile(filepath.Join(data, name), nil, 0o644))
		want[name] = true
	}
	g := newGuest(t, o)
	buf, used := g.alloc(256), g.alloc(4)
	got := map[string]bool{}
	cookie := uint64(0)
	for calls := 0; ; calls++ {
		if calls > 10000 {
			t.Fatal("fd_readdir never ends")
		}
		if e := g.call("fd_readdir", 3, uint64(buf), 256, cookie, uint64(used)); e != errSuccess {
			t.Fatal(e)
		}
		n := g.u32(used)
		b := g.mem[buf : buf+n]
		progressed := false
		for len(b) >= 24 {
			next, namlen := le.Uint64(b[0:]), le.Uint32(b[16:])
			if uint32(len(b)-24) < namlen {
				break // truncated: read again from this entry's cookie
			}
			got[string(b[24:24+namlen])] = true
			cookie = next
			progressed = true
			b = b[24+namlen:]
		}
		if n < 256 {
			break
		}
		if !progressed {
			t.Fatal("a 256-byte buffer cannot hold one entry")
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for name := range want {
		if !got[name] {
			t.Errorf("missing %q", name)
		}
	}
}

func TestPrestatScan(t *testing.T) {
	o, _, _ := dirOpts(t, false)
	// null at 3, the preopen at 4.
	o.Files = append(o.Files[:3:3], config.File{Kind: config.KindNull, Name: "null"}, o.Files[3])
	g := newGuest(t, o)
	st := g.alloc(8)
	if e := g.call("fd_prestat_get", 3, uint64(st)); e != errSuccess || g.mem[st] == preopentypeDir {
		t.Errorf("fd 3 (null): errno %d, tag %d; want success and a tag that is not dir", e, g.mem[st])
	}
	if e := g.call("fd_prestat_get", 4, uint64(st)); e != errSuccess || g.mem[st] != preopentypeDir || g.u32(st+4) != 5 {
		t.Errorf("fd 4 (/data): errno %d, tag %d, len %d", e, g.mem[st], g.u32(st+4))
	}
	name := g.alloc(5)
	if e := g.call("fd_prestat_dir_name", 4, uint64(name), 5); e != errSuccess || string(g.mem[name:name+5]) != "/data" {
		t.Errorf("dir name: errno %d, %q", e, g.mem[name:name+5])
	}
	if e := g.call("fd_prestat_get", 5, uint64(st)); e != errBadf {
		t.Errorf("fd 5 (none): errno %d, want EBADF", e)
	}
}

func TestSubdirDescriptorConfined(t *testing.T) {
	o, _, data := dirOpts(t, false)
	must(t, os.WriteFile(filepath.Join(data, "sub", "x.txt"), []byte("x"), 0o644))
	g := newGuest(t, o)
	e, sub := g.openAt(3, "sub", oflagDirectory, rightFdReaddir|rightPathOpen, true)
	if e != errSuccess {
		t.Fatalf("open sub: %d", e)
	}
	st := g.alloc(24)
	g.call("fd_fdstat_get", uint64(sub), uint64(st))
	if g.mem[st] != filetypeDirectory {
		t.Errorf("sub filetype %d", g.mem[st])
	}
	if e, _ := g.openAt(uint64(sub), "x.txt", 0, rightFdRead, true); e != errSuccess {
		t.Errorf("open x.txt in sub: %d", e)
	}
	for _, p := range []string{"../in.txt", "../sub/x.txt", "/in.txt", "a/../../in.txt"} {
		if e, _ := g.openAt(uint64(sub), p, 0, rightFdRead, true); e != errPerm {
			t.Errorf("open %q from sub: errno %d, want EPERM", p, e)
		}
	}
	// A file descriptor is not a directory for path calls.
	_, f := g.openAt(3, "in.txt", 0, rightFdRead, true)
	if e, _ := g.openAt(uint64(f), "x", 0, rightFdRead, true); e != errNotdir {
		t.Errorf("path_open relative to a file: errno %d, want ENOTDIR", e)
	}
}
