package keepimage

import (
	"bytes"
	"compress/gzip"
	"crypto/sha512"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
)

func TestInitSHA384(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, entries []Entry) string {
		var b bytes.Buffer
		if err := WriteInitramfs(&b, entries); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		os.WriteFile(p, b.Bytes(), 0o644)
		return p
	}
	good := write("good", []Entry{{Name: "lib", Mode: 0o755, Dir: true}, {Name: InitPath, Mode: 0o755, Data: []byte("castellan")}})
	want := sha512.Sum384([]byte("castellan"))
	if got, err := InitSHA384(good); err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("InitSHA384 = %x, %v", got, err)
	}
	notGzip := filepath.Join(dir, "plain")
	os.WriteFile(notGzip, []byte("not an archive"), 0o644)
	for _, tc := range []struct{ path, want string }{
		{write("noinit", []Entry{{Name: "bin", Mode: 0o755, Dir: true}}), "no /init in the initramfs"},
		{notGzip, "initramfs:"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		if _, err := InitSHA384(tc.path); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.path, err, tc.want)
		}
	}
}

// rawEntry is one cpio entry as a hostile image builder may write it.
type rawEntry struct {
	name, link string
	data       string
	mode       cpio.FileMode // type bits; TypeReg when 0
	links, ino int
}

// rawInitramfs writes entries in the given order as a gzip-compressed
// newc archive, then extra (uncompressed, inside the gzip stream).
func rawInitramfs(t *testing.T, entries []rawEntry, extra []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	cw := cpio.NewWriter(zw)
	for i, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = cpio.TypeReg
		}
		h := &cpio.Header{Name: e.name, Mode: mode | 0o755, Links: max(e.links, 1), Inode: int64(max(e.ino, i+1))}
		body := e.data
		if mode == cpio.TypeSymlink {
			body = e.link
		}
		if mode != cpio.TypeDir {
			h.Size = int64(len(body))
		}
		if err := cw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := cw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cw.Close(); err != nil {
		t.Fatal(err)
	}
	zw.Write(extra)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestInitSHA384IsTheInitTheKernelRuns: an image builder cannot make the
// measurement name one /init while the kernel runs another: the last
// entry named init counts, and archives whose /init depends on more than
// its entries (a symlink, a hard link, a path through a symlink or "..",
// a second archive after the trailer) are refused.
func TestInitSHA384IsTheInitTheKernelRuns(t *testing.T) {
	evil := sha512.Sum384([]byte("evil"))
	second := rawInitramfs(t, []rawEntry{{name: "init", data: "evil"}}, nil)
	zr, _ := gzip.NewReader(bytes.NewReader(second))
	secondCPIO, _ := io.ReadAll(zr)
	for _, c := range []struct {
		name    string
		entries []rawEntry
		extra   []byte
		want    string // an error, or "" for the sum of "evil"
	}{
		{"later init wins", []rawEntry{{name: "init", data: "benign"}, {name: "bin", mode: cpio.TypeDir}, {name: "init", data: "evil"}}, nil, ""},
		{"./init is /init", []rawEntry{{name: "init", data: "benign"}, {name: "./init", data: "evil"}}, nil, ""},
		{"padding after the trailer", []rawEntry{{name: "init", data: "evil"}}, make([]byte, 512), ""},
		{"init is a symlink", []rawEntry{{name: "bin/evil", data: "evil"}, {name: "init", data: "benign"}, {name: "init", mode: cpio.TypeSymlink, link: "bin/evil"}}, nil, "not a regular file"},
		{"init is hard-linked", []rawEntry{{name: "init", data: "benign", links: 2, ino: 7}, {name: "x", data: "evil", links: 2, ino: 7}}, nil, "hard-linked"},
		{"init through a symlink", []rawEntry{{name: "init", data: "benign"}, {name: "lnk", mode: cpio.TypeSymlink, link: "."}, {name: "lnk/init", data: "evil"}}, nil, "under the symbolic link /lnk"},
		{"dot-dot", []rawEntry{{name: "init", data: "benign"}, {name: "bin/../init", data: "evil"}}, nil, `".."`},
		{"a second archive", []rawEntry{{name: "init", data: "benign"}}, secondCPIO, "after the archive's trailer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "initrd")
			if err := os.WriteFile(p, rawInitramfs(t, c.entries, c.extra), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := InitSHA384(p)
			if c.want == "" {
				if err != nil || !bytes.Equal(got, evil[:]) {
					t.Fatalf("InitSHA384 = %x, %v; want the sum of the last /init", got, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("InitSHA384 = %x, %v; want an error with %q", got, err, c.want)
			}
		})
	}
}
