//go:build !linux

package wasi

import (
	"errors"
	"io/fs"
	"os"
	"time"
)

// sysStat reports no device or inode numbers where Castellan does not read
// the platform's stat structure; times fall back to the modification time.
func sysStat(fs.FileInfo) statT { return statT{nlink: 1} }

// lchtimes is not supported where Castellan has no utimensat: ENOTSUP.
func lchtimes(*os.Root, string, time.Time, time.Time) error {
	return errors.ErrUnsupported
}
