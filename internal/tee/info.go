package tee

import (
	"encoding/hex"
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// Status says whether a backend is usable on this host.
type Status struct {
	Name     string `json:"name"`
	Platform string `json:"platform"`
	Usable   bool   `json:"usable"`
	Reason   string `json:"reason,omitempty"` // why not, when not usable
	Hint     string `json:"hint,omitempty"`
}

// Info returns the status of every backend, in Names order. It does not
// create the simulation CA: a sim backend whose CA does not exist yet is
// usable and will create it on first use.
func Info() []Status {
	var out []Status
	for _, name := range Names() {
		b, _ := New(name)
		s := Status{Name: name, Platform: b.Platform()}
		switch name {
		case NameSNP, NameTDX:
			if err := b.Available(); err != nil {
				s.Reason = err.Error()
				vm := "an AMD SEV-SNP"
				if name == NameTDX {
					vm = "an Intel TDX"
				}
				s.Hint = fmt.Sprintf("run castellan inside %s confidential VM (Linux 6.7+ has configfs-tsm); for development use --backend sim-%s", vm, name)
			} else {
				s.Usable = true
				s.Hint = "evidence is signed by the CPU vendor's key and verified against the vendor's roots"
			}
		case NameSimSNP, NameSimTDX:
			dir, err := sim.DefaultDir()
			if err != nil {
				s.Reason = err.Error()
				s.Hint = "set CASTELLAN_CONFIG_DIR to a writable directory"
				break
			}
			s.Usable = true
			path := sim.RootsPath(dir)
			if _, err := os.Stat(path); err != nil {
				s.Hint = fmt.Sprintf("usable; on first use a local simulation root is generated at %s; its evidence is trusted only by policies that name it", path)
			} else {
				s.Hint = fmt.Sprintf("usable; evidence is signed by the local simulation root at %s and trusted only by policies that name it", path)
			}
		case NameNil:
			s.Usable = true
			s.Hint = "no TEE: the keep is a plain process and its certificate says insecure"
		}
		out = append(out, s)
	}
	return out
}

// SimMeasurement returns the launch measurement simulated evidence from
// this executable claims, in hex, for a measurement database.
func SimMeasurement() (string, error) {
	m, err := sim.Measurement()
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(m), nil
}
