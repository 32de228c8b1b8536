//go:build linux

package wasi

import (
	"io/fs"
	"syscall"
)

func sysStat(fi fs.FileInfo) statT {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return statT{nlink: 1}
	}
	return statT{
		dev:   uint64(st.Dev),
		ino:   uint64(st.Ino),
		nlink: uint64(st.Nlink),
		atim:  st.Atim.Nano(),
		ctim:  st.Ctim.Nano(),
	}
}
