package wasi

import (
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
)

// hostAlloc is how many bytes the Go heap allocated while f ran.
func hostAlloc(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestOverlappingIovecsDoNotAmplify: a guest may point all of its 1024
// iovecs at the same large region. A write to a socket must not join them
// into one host buffer of 1024 times that region (with 4 GiB of guest
// memory, 4 TiB: the whole host process dies of it).
func TestOverlappingIovecsDoNotAmplify(t *testing.T) {
	for _, fn := range []string{"fd_write", "sock_send"} {
		t.Run(fn, func(t *testing.T) {
			g, _, fd := sockGuest(t)
			if e := g.call("fd_fdstat_set_flags", fd, fdflagNonblock); e != errSuccess {
				t.Fatalf("fd_fdstat_set_flags: errno %d", e)
			}
			const region, count = 256 << 10, 1024
			buf, iovs, np := g.alloc(region), g.alloc(8*count), g.alloc(4)
			for i := range count {
				le.PutUint32(g.mem[iovs+uint32(8*i):], buf)
				le.PutUint32(g.mem[iovs+uint32(8*i)+4:], region)
			}
			var e Errno
			used := hostAlloc(func() {
				if fn == "fd_write" {
					e = g.call(fn, fd, uint64(iovs), count, uint64(np))
				} else {
					e = g.call(fn, fd, uint64(iovs), count, 0, uint64(np))
				}
			})
			if e != errSuccess || g.u32(np) == 0 {
				t.Fatalf("%s: errno %d, n %d", fn, e, g.u32(np))
			}
			if used > 32<<20 {
				t.Errorf("%s of %d overlapping iovecs of %d KiB allocated %d MiB on the host", fn, count, region>>10, used>>20)
			}
		})
	}
}

func TestGather(t *testing.T) {
	b := func(s string) []byte { return []byte(s) }
	for _, tc := range []struct {
		name  string
		iovs  [][]byte
		limit int
		want  []string // the chunks, in order
	}{
		{"none", nil, 4, nil},
		{"empty ones", [][]byte{{}, {}}, 4, nil},
		{"one, larger than the limit", [][]byte{b("abcdefgh")}, 4, []string{"abcdefgh"}},
		{"first at the limit", [][]byte{b("abcd"), b("ef")}, 4, []string{"abcd", "ef"}},
		{"joined", [][]byte{b("ab"), {}, b("cd"), b("e")}, 8, []string{"abcde"}},
		{"split", [][]byte{b("ab"), b("cdef"), b("gh")}, 4, []string{"abcd", "efgh"}},
		{"split into three", [][]byte{b("abc"), b("defghij")}, 4, []string{"abcd", "efghij"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			iovs := tc.iovs
			for range 10 {
				chunk, rest := gather(iovs, tc.limit)
				if len(chunk) == 0 {
					break
				}
				got = append(got, string(chunk))
				iovs = rest
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("chunks %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLongPathNotCopied: a path as long as the guest's memory is refused
// before the host copies it (the copy doubled the guest's memory).
func TestLongPathNotCopied(t *testing.T) {
	o, _, _ := dirOpts(t, false)
	g := newGuest(t, o)
	long := g.alloc(512 << 10)
	for i := range 512 << 10 {
		g.mem[long+uint32(i)] = 'a'
	}
	np := g.alloc(4)
	for _, tc := range []struct {
		name string
		args []uint64
	}{
		{"path_open", []uint64{3, 0, uint64(long), 512 << 10, 0, rightFdRead, 0, 0, uint64(np)}},
		{"path_create_directory", []uint64{3, uint64(long), 512 << 10}},
		{"path_filestat_get", []uint64{3, 0, uint64(long), 512 << 10, uint64(np)}},
		{"path_symlink", []uint64{uint64(long), 512 << 10, 3, uint64(long), 8}},
		{"path_unlink_file", []uint64{3, uint64(long), 512 << 10}},
		{"path_remove_directory", []uint64{3, uint64(long), 512 << 10}},
	} {
		var e Errno
		used := hostAlloc(func() { e = g.call(tc.name, tc.args...) })
		if e != errNametoolong {
			t.Errorf("%s with a 512 KiB path: errno %d, want ENAMETOOLONG", tc.name, e)
		}
		if used > 256<<10 {
			t.Errorf("%s with a 512 KiB path allocated %d KiB on the host", tc.name, used>>10)
		}
	}
	// 4095 bytes is still a path (of a name too long for the file system).
	if e := g.call("path_create_directory", 3, uint64(long), 4095); e != errNametoolong {
		t.Errorf("path_create_directory with a 4095-byte name: errno %d", e)
	}
}

// TestLingeringConnectionsCount: a closed connection whose peer does not
// read keeps its socket, goroutines and buffer while it lingers (up to
// lingerTime). It stays within the open-file limit meanwhile, or a guest
// could close and accept in a loop and hold any number of them.
func TestLingeringConnectionsCount(t *testing.T) {
	addrc := make(chan string, 1)
	g := newGuest(t, Options{
		Files:        []config.File{{Kind: config.KindListen, Name: "l", Prot: config.ProtTCP, Addr: "127.0.0.1"}},
		OnListen:     func(_ string, a net.Addr) { addrc <- a.String() },
		MaxOpenFiles: 2,
	})
	addr := <-addrc
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	peer := dial()
	fd := g.accept(0)
	if e := g.call("fd_fdstat_set_flags", fd, fdflagNonblock); e != errSuccess {
		t.Fatalf("fd_fdstat_set_flags: errno %d", e)
	}
	// Write until the socket and the connection's buffer are full.
	const size = 512 << 10
	iov, buf, np := g.alloc(8), g.alloc(size), g.alloc(4)
	le.PutUint32(g.mem[iov:], buf)
	le.PutUint32(g.mem[iov+4:], size)
	for i := 0; ; i++ {
		e := g.call("fd_write", fd, uint64(iov), 1, uint64(np))
		if e == errAgain {
			break
		}
		if e != errSuccess || i > 10000 {
			t.Fatalf("fd_write %d: errno %d", i, e)
		}
	}
	if e := g.call("fd_close", fd); e != errSuccess {
		t.Fatalf("fd_close: errno %d", e)
	}
	dial()
	if u, _, _, _ := g.pollRead(0, time.Hour); u != 1 {
		t.Fatalf("poll on the listener: userdata %d", u)
	}
	fdp := g.alloc(4)
	if e := g.call("sock_accept", 0, 0, uint64(fdp)); e != errMfile {
		t.Fatalf("sock_accept while a closed connection lingers: errno %d, want EMFILE", e)
	}
	// Once the peer has read everything, the connection is gone.
	go io.Copy(io.Discard, peer)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e := g.call("sock_accept", 0, 0, uint64(fdp))
		if e == errSuccess {
			break
		}
		if e != errMfile || time.Now().After(deadline) {
			t.Fatalf("sock_accept after the linger: errno %d", e)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
