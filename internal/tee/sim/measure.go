package sim

import (
	"crypto/sha512"
	"fmt"
	"io"
	"os"
	"sync"
)

var measurement = sync.OnceValues(func() ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("simulated measurement: %w", err)
	}
	f, err := os.Open(exe)
	if err != nil {
		return nil, fmt.Errorf("simulated measurement: %w", err)
	}
	defer f.Close()
	h := sha512.New384()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("simulated measurement: %s: %w", exe, err)
	}
	return h.Sum(nil), nil
})

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
