package keepimage

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzKernelRelease: any bytes as a kernel give a release without a slash
// or NUL, or an error; never a panic.
func FuzzKernelRelease(f *testing.F) {
	f.Add(fakeKernel("6.12.117+deb12-cloud-amd64"))
	f.Add(fakeKernel(""))
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rel, err := KernelRelease(b)
		if err == nil && (rel == "" || strings.ContainsAny(rel, "/\x00 ")) {
			t.Fatalf("release %q", rel)
		}
	})
}

// FuzzInitSum: any bytes as an initramfs give a SHA-384 or an error; never
// a panic.
func FuzzInitSum(f *testing.F) {
	var b bytes.Buffer
	if err := WriteInitramfs(&b, []Entry{{Name: "lib", Mode: 0o755, Dir: true}, {Name: InitPath, Mode: 0o755, Data: []byte("castellan")}}); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add([]byte("\x1f\x8b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		sum, err := initSum(bytes.NewReader(b))
		if err == nil && len(sum) != 48 {
			t.Fatalf("sum of %d bytes", len(sum))
		}
	})
}
