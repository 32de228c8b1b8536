package keepimage

import (
	"bytes"
	"crypto/sha512"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
