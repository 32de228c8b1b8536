package keepimage

import (
	"compress/gzip"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// InitSHA384 is the SHA-384 of /init in the image's initramfs file
// initrd: the launch measurement a simulated SEV-SNP VM keep of the image
// claims (as a process keep claims its own executable's), and what a
// policy that trusts such keeps lists.
//
// It is the /init the kernel ends up with: the kernel unpacks entries in
// order and a later one replaces an earlier one, so the last entry named
// init ("init", "./init", "/init") counts. An archive whose /init cannot be
// known from its entries alone is refused: /init that is not a regular
// file or is hard-linked (the kernel writes a linked entry's bytes into
// the file it links to), an entry under a symbolic link of the archive or
// with ".." in its name, or anything but padding after the trailer (the
// kernel would unpack a second archive there). The file is hashed as it
// is read, never held in memory.
func InitSHA384(initrd string) ([]byte, error) {
	f, err := os.Open(initrd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sum, err := initSum(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", initrd, err)
	}
	return sum, nil
}

var errNoInit = errors.New("no /init in the initramfs")

// maxTail bounds the padding read after an archive's trailer.
const maxTail = 64 << 10

func initSum(r io.Reader) ([]byte, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	cr := cpio.NewReader(zr)
	symlinks := map[string]bool{}
	var sum []byte
	for {
		h, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		name, err := entryPath(h.Name, symlinks)
		if err != nil {
			return nil, err
		}
		if h.Mode&^cpio.ModePerm == cpio.TypeSymlink {
			symlinks[name] = true
		}
		if name != InitPath {
			continue
		}
		switch {
		case !h.Mode.IsRegular():
			return nil, fmt.Errorf("initramfs: /%s is not a regular file (mode %o)", InitPath, int64(h.Mode))
		case h.Links > 1:
			return nil, fmt.Errorf("initramfs: /%s is hard-linked (%d links): its bytes may be another entry's", InitPath, h.Links)
		}
		hs := sha512.New384()
		if n, err := io.Copy(hs, cr); err != nil || n != h.Size {
			return nil, fmt.Errorf("initramfs: /%s is cut short (%d of %d bytes): %v", InitPath, n, h.Size, err)
		}
		sum = hs.Sum(nil)
	}
	// Only zero padding may follow the trailer.
	tail, err := io.ReadAll(io.LimitReader(zr, maxTail+1))
	if err != nil {
		return nil, fmt.Errorf("initramfs: after the trailer: %w", err)
	}
	if len(tail) > maxTail || strings.Trim(string(tail), "\x00") != "" {
		return nil, fmt.Errorf("initramfs: data after the archive's trailer (a second archive is not measured)")
	}
	if sum == nil {
		return nil, errNoInit
	}
	return sum, nil
}

// entryPath is an entry's path as the kernel creates it, without a leading
// slash, refusing names whose place depends on the file system: a ".."
// part, or a folder that an earlier entry made a symbolic link.
func entryPath(name string, symlinks map[string]bool) (string, error) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("initramfs: entry %q has \"..\" in its name", name)
		}
	}
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	for dir := path.Dir(p); dir != "." && dir != "/" && dir != ""; dir = path.Dir(dir) {
		if symlinks[dir] {
			return "", fmt.Errorf("initramfs: entry %q is under the symbolic link /%s", name, dir)
		}
	}
	return p, nil
}
