package wasi

import (
	"context"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
)

// TestSecretFile reads a secret descriptor: its bytes come from memory,
// it reads, preads, seeks and stats like a regular file, and refuses every
// write.
func TestSecretFile(t *testing.T) {
	g := newGuest(t, Options{Files: []config.File{{Kind: config.KindSecret, Name: "tls.key", Secret: []byte("s3cret-bytes")}}})
	buf := g.alloc(64)
	iov := g.alloc(8)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], 6)
	n := g.alloc(8)
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || string(g.mem[buf:buf+g.u32(n)]) != "s3cret" {
		t.Fatalf("read: %d %q", e, g.mem[buf:buf+g.u32(n)])
	}
	le.PutUint32(g.mem[iov+4:], 64)
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || string(g.mem[buf:buf+g.u32(n)]) != "-bytes" {
		t.Fatalf("read rest: %d %q", e, g.mem[buf:buf+g.u32(n)])
	}
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || g.u32(n) != 0 {
		t.Fatalf("read at EOF: %d %d", e, g.u32(n))
	}
	if e := g.call("fd_pread", 0, uint64(iov), 1, 2, uint64(n)); e != errSuccess || string(g.mem[buf:buf+g.u32(n)]) != "cret-bytes" {
		t.Fatalf("pread: %d %q", e, g.mem[buf:buf+g.u32(n)])
	}
	if e := g.call("fd_seek", 0, 1, whenceSet, uint64(n)); e != errSuccess || le.Uint64(g.mem[n:]) != 1 {
		t.Fatalf("seek: %d %d", e, le.Uint64(g.mem[n:]))
	}
	if e := g.call("fd_advise", 0, 0, 12, 2); e != errSuccess {
		t.Errorf("advise: %d", e)
	}
	st := g.alloc(64)
	if e := g.call("fd_filestat_get", 0, uint64(st)); e != errSuccess || g.mem[st+16] != filetypeRegularFile || le.Uint64(g.mem[st+32:]) != 12 {
		t.Fatalf("filestat: %d type %d size %d", e, g.mem[st+16], le.Uint64(g.mem[st+32:]))
	}
	for _, c := range []struct {
		fn   string
		args []uint64
	}{
		{"fd_write", []uint64{0, uint64(iov), 1, uint64(n)}},
		{"fd_pwrite", []uint64{0, uint64(iov), 1, 0, uint64(n)}},
		{"fd_filestat_set_size", []uint64{0, 0}},
		{"fd_allocate", []uint64{0, 0, 10}},
	} {
		if e := g.call(c.fn, c.args...); e == errSuccess {
			t.Errorf("%s on a secret succeeded", c.fn)
		}
	}
	if e := g.call("fd_read", 0, uint64(iov), 1, uint64(n)); e != errSuccess || !strings.HasPrefix(string(g.mem[buf:buf+g.u32(n)]), "3cret") {
		t.Errorf("the refused writes moved or changed the secret: %q", g.mem[buf:buf+g.u32(n)])
	}
	// A secret entry without a value (not supplied) does not open.
	if _, err := New(context.Background(), Options{Files: []config.File{{Kind: config.KindSecret, Name: "k"}}}); err == nil || !strings.Contains(err.Error(), "was not supplied") {
		t.Errorf("unbound secret: %v", err)
	}
}
