package wasi

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
)

// BenchmarkHostCalls measures the host side of the most frequent
// descriptor calls, through the same dispatch as a guest's (System.call):
// what the descriptor kinds cost per call. Disk I/O is kept out (64-byte
// reads of a cached file, writes to null).
func BenchmarkHostCalls(b *testing.B) {
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, 4096), 0o644); err != nil {
		b.Fatal(err)
	}
	g := newGuest(b, Options{Files: []config.File{
		{Kind: config.KindStdin}, {Kind: config.KindStdout}, {Kind: config.KindStderr},
		{Kind: config.KindNull}, {Kind: config.KindDir, Name: "/d", Path: dir},
	}})
	e, fd := g.openAt(4, "f", 0, rightsFile, false)
	if e != errSuccess {
		b.Fatalf("path_open: errno %d", e)
	}
	iov, buf, ret := g.alloc(8), g.alloc(64), g.alloc(8)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 64)
	for _, c := range []struct {
		name string
		fn   string
		args []uint64
	}{
		{"fd_write_null", "fd_write", []uint64{3, uint64(iov), 1, uint64(ret)}},
		{"fd_pread_file", "fd_pread", []uint64{uint64(fd), uint64(iov), 1, 0, uint64(ret)}},
		{"fd_seek_file", "fd_seek", []uint64{uint64(fd), 0, whenceSet, uint64(ret)}},
		{"fd_fdstat_get", "fd_fdstat_get", []uint64{uint64(fd), uint64(ret)}},
		{"fd_filestat_get_null", "fd_filestat_get", []uint64{3, uint64(g.alloc(64))}},
	} {
		var fn hostFn
		for _, f := range functions {
			if f.name == c.fn {
				fn = f.fn
			}
		}
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			for b.Loop() {
				if e := g.s.call(ctx, g, fn, c.args); e != errSuccess {
					b.Fatalf("errno %d", e)
				}
			}
		})
	}
}

// BenchmarkPathOpen measures path_open and fd_close of a file two folders
// below a preopen: the host side of a guest's open(2), os.Root's walk
// included.
func BenchmarkPathOpen(b *testing.B) {
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "b", "f"), []byte("x"), 0o644); err != nil {
		b.Fatal(err)
	}
	g := newGuest(b, Options{Files: []config.File{
		{Kind: config.KindStdin}, {Kind: config.KindStdout}, {Kind: config.KindStderr},
		{Kind: config.KindDir, Name: "/d", Path: dir},
	}})
	pp, pl := g.str("a/b/f")
	ret := g.alloc(4)
	for b.Loop() {
		if e := g.call("path_open", 3, lookupSymlinkFollow, pp, pl, 0, rightFdRead, 0, 0, uint64(ret)); e != errSuccess {
			b.Fatalf("path_open: errno %d", e)
		}
		if e := g.call("fd_close", uint64(g.u32(ret))); e != errSuccess {
			b.Fatalf("fd_close: errno %d", e)
		}
	}
}
