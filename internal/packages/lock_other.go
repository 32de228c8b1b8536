//go:build !unix

package packages

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// lockDir takes an exclusive lock on the store with a lock file created
// exclusively; it gives up after a minute (a crashed process may have left
// the file: remove it by hand).
func lockDir(dir string) (unlock func(), err error) {
	p := filepath.Join(dir, ".lock.excl")
	deadline := time.Now().Add(time.Minute)
	for {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
		if err == nil {
			f.Close()
			return func() { os.Remove(p) }, nil
		}
		if !os.IsExist(err) || time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
