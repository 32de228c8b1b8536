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
		case NameSGX, NameCCA:
			if err := b.Available(); err != nil {
				s.Reason = err.Error()
				if name == NameSGX {
					s.Hint = "run castellan inside an SGX enclave under Gramine with DCAP attestation (deploy/gramine); for development use --backend sim-sgx"
				} else {
					s.Hint = "run castellan inside an Arm CCA realm (Linux 6.13+ has the arm_cca_guest configfs-tsm provider); for development use --backend sim-cca"
				}
			} else {
				s.Usable = true
				if name == NameSGX {
					s.Hint = "evidence is an Intel DCAP quote, verified against Intel's SGX root"
				} else {
					s.Hint = "evidence is an Arm CCA token, trusted when the policy lists the platform's CPAK"
				}
			}
		case NameSimSNP, NameSimTDX, NameSimSGX, NameSimCCA:
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

// SimSGXMeasurement and SimCCAMeasurement return the MRENCLAVE and the
// Realm Initial Measurement simulated evidence from this executable claims,
// in hex, for a measurement database.
func SimSGXMeasurement() (string, error) {
	m, err := sim.SGXMeasurement()
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(m), nil
}

func SimCCAMeasurement() (string, error) {
	m, err := sim.CCAMeasurement()
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(m), nil
}
