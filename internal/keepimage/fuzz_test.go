package keepimage

import (
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
