//go:build !unix

package sim

import "os"

func fileIdentity(os.FileInfo) string { return "" }
