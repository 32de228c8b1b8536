//go:build !linux

package wasi

import "io/fs"

// sysStat reports no device or inode numbers where Castellan does not read
// the platform's stat structure; times fall back to the modification time.
func sysStat(fs.FileInfo) statT { return statT{nlink: 1} }
