package keepimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// KernelDirEnv names a folder holding an unpacked kernel package
// (boot/vmlinuz-*, lib/modules/*), as scripts/test prepares it.
const KernelDirEnv = "CASTELLAN_KERNEL_DIR"

// KernelRelease reads the release ("6.12.117+deb12-cloud-amd64") from a
// bzImage's setup header (Linux boot protocol 2.00+: "HdrS" at 0x202, the
// version string's offset minus 0x200 at 0x20e).
func KernelRelease(image []byte) (string, error) {
	if len(image) < 0x210 || string(image[0x202:0x206]) != "HdrS" || image[0x1fe] != 0x55 || image[0x1ff] != 0xaa {
		return "", errors.New("not a Linux bzImage (no boot setup header)")
	}
	off := int(binary.LittleEndian.Uint16(image[0x20e:])) + 0x200
	if off <= 0x200 || off >= len(image) {
		return "", errors.New("bzImage without a version string")
	}
	s := image[off:min(len(image), off+256)]
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	rel, _, _ := strings.Cut(string(s), " ")
	if rel == "" || strings.ContainsAny(rel, "/\x00") {
		return "", fmt.Errorf("bzImage version string %q has no release", s)
	}
	return rel, nil
}

// FindKernel returns a kernel and its modules folder: the newest
// boot/vmlinuz-* under $CASTELLAN_KERNEL_DIR if set, else under /boot.
// The modules folder is lib/modules/RELEASE (or usr/lib/modules/RELEASE)
// beside it.
func FindKernel() (kernel, modules string, err error) {
	root := "/"
	if d := os.Getenv(KernelDirEnv); d != "" {
		root = d
	}
	cands, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	sort.Strings(cands)
	if len(cands) == 0 {
		return "", "", fmt.Errorf("no kernel found in %s (give --kernel FILE, or set %s to an unpacked linux-image package)", filepath.Join(root, "boot"), KernelDirEnv)
	}
	kernel = cands[len(cands)-1]
	rel := strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-")
	return kernel, ModulesDirFor(root, rel), nil
}

// ModulesDirFor returns the modules folder of release under root, or ""
// when there is none.
func ModulesDirFor(root, release string) string {
	for _, d := range []string{filepath.Join(root, "lib", "modules", release), filepath.Join(root, "usr", "lib", "modules", release)} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			return d
		}
	}
	return ""
}
