// Package atomicfile writes files so that a reader sees the old content or
// the new, never half of it: a temporary file beside the target, renamed
// over it. It does not sync: what it writes are caches and reports that a
// crash may lose but must not tear.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes b to path with mode perm through a temporary file in
// path's folder; on any error the temporary file is removed.
func Write(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
