package keepimage

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Entry is one file or folder of the initramfs.
type Entry struct {
	Name string // path without a leading slash, e.g. "lib/modules/tsm.ko.xz"
	Mode int64  // permission bits (0755, 0644)
	Dir  bool
	Data []byte // file contents
}

// WriteInitramfs writes entries as a gzip-compressed newc cpio archive
// that depends on nothing but the entries: sorted by name, inodes
// numbered in that order, owner 0:0, modification time 0, one link per
// file, and a gzip header without name or time. Folders that hold entries
// are added if missing. The kernel extracts it over its built-in initramfs,
// which has /dev/console.
func WriteInitramfs(w io.Writer, entries []Entry) error {
	all := map[string]Entry{}
	for _, e := range entries {
		name := strings.TrimPrefix(path.Clean("/"+e.Name), "/")
		if name == "" || name != strings.TrimPrefix(e.Name, "/") {
			return fmt.Errorf("initramfs: bad entry name %q", e.Name)
		}
		if _, dup := all[name]; dup {
			return fmt.Errorf("initramfs: two entries named %q", name)
		}
		e.Name = name
		all[name] = e
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if p, ok := all[d]; ok && !p.Dir {
				return fmt.Errorf("initramfs: %q is a file and a folder", d)
			}
			if _, ok := all[d]; !ok {
				all[d] = Entry{Name: d, Mode: 0o755, Dir: true}
			}
		}
	}
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)

	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	// The zero Header: no name, no comment, mtime 0.
	cw := cpio.NewWriter(zw)
	for i, n := range names {
		e := all[n]
		h := &cpio.Header{Name: n, Inode: int64(i + 1), Mode: cpio.FileMode(e.Mode & 0o7777)}
		if e.Dir {
			h.Mode |= cpio.TypeDir
			h.Links = 2
		} else {
			h.Mode |= cpio.TypeReg
			h.Links = 1
			h.Size = int64(len(e.Data))
		}
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		if !e.Dir {
			if _, err := io.Copy(cw, bytes.NewReader(e.Data)); err != nil {
				return fmt.Errorf("initramfs: %w", err)
			}
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return zw.Close()
}

// ReadInitramfs lists a gzip-compressed cpio archive (tests and
// inspection): entries in archive order.
func ReadInitramfs(r io.Reader) ([]Entry, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	cr := cpio.NewReader(zr)
	var out []Entry
	for {
		h, err := cr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		e := Entry{Name: h.Name, Mode: int64(h.Mode.Perm()), Dir: h.Mode.IsDir()}
		if h.Mode.IsRegular() {
			if e.Data, err = io.ReadAll(io.LimitReader(cr, 1<<30)); err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}
		}
		out = append(out, e)
	}
}
