package keepimage

import (
	"crypto/sha512"
	"errors"
	"fmt"
	"os"
)

// InitSHA384 is the SHA-384 of /init in the image's initramfs file
// initrd: the launch measurement a simulated SEV-SNP VM keep of the image
// claims (as a process keep claims its own executable's), and what a
// policy that trusts such keeps lists.
func InitSHA384(initrd string) ([]byte, error) {
	f, err := os.Open(initrd)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	entries, err := ReadInitramfs(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", initrd, err)
	}
	for _, e := range entries {
		if e.Name == InitPath && !e.Dir {
			sum := sha512.Sum384(e.Data)
			return sum[:], nil
		}
	}
	return nil, fmt.Errorf("%s: %w", initrd, errNoInit)
}

var errNoInit = errors.New("no /init in the initramfs")
