package sim

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/castellan-dev/castellan/internal/atomicfile"
)

var measurement = sync.OnceValues(func() ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("simulated measurement: %w", err)
	}
	return measureFile(exe)
})

// measureFile returns SHA-384 of the file at exe, from the measurement
// cache when the same file was measured before.
func measureFile(exe string) ([]byte, error) {
	f, err := os.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("simulated measurement: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("simulated measurement: %w", err)
	}
	cache := measurementCachePath(exe, fi)
	if cache != "" {
		if b, err := os.ReadFile(cache); err == nil {
			if m, err := hex.DecodeString(strings.TrimSpace(string(b))); err == nil && len(m) == sha512.Size384 {
				return m, nil
			}
		}
	}
	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("simulated measurement: %s: %w", exe, err)
	}
	m := h.Sum(nil)
	if cache != "" {
		writeMeasurementCache(cache, m)
	}
	return m, nil
}

// measurementCachePath names the file that remembers the measurement of
// one executable file, identified by its path, size, modification time and
// (on Unix) device, inode and change time, so that hashing a 36 MB binary
// is paid once per build rather than at every keep start. A replaced
// binary has a new identity. The measurement of a simulated keep is not a
// security boundary (simulated keeps are insecure by definition); this
// cache only has to be correct, and it is keyed so that it is. "" when the
// simulation folder is unknown.
func measurementCachePath(exe string, fi os.FileInfo) string {
	dir, err := DefaultDir()
	if err != nil {
		return ""
	}
	id := fmt.Sprintf("%s\x00%d\x00%d\x00%s", exe, fi.Size(), fi.ModTime().UnixNano(), fileIdentity(fi))
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(dir, "measurements", hex.EncodeToString(sum[:16]))
}

func writeMeasurementCache(path string, m []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return
	}
	atomicfile.Write(path, []byte(hex.EncodeToString(m)+"\n"), 0o600) // a cache: a failure costs a measurement
}

// Measurement returns the launch measurement a simulated report claims:
// SHA-384 of the running executable, so that it is stable for one
// castellan binary and changes with every build, as a real launch
// measurement of the runtime would. An owner puts it in the measurement
// database (castellan platform info prints it).
func Measurement() ([]byte, error) {
	m, err := measurement()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), m...), nil
}
