// Package tee is the keep's side of attestation: backends that ask a
// Trusted Execution Environment for a signed report over 64 bytes of report
// data, and Attest, which binds the keep's key, the verifier's nonce and the
// workload digest into that report data and wraps the result in an
// evidence envelope.
//
// Backends: "snp" and "tdx" run inside a confidential VM and ask the kernel
// (configfs-tsm, else /dev/sev-guest or /dev/tdx_guest); "cca" runs in an
// Arm CCA realm and asks configfs-tsm; "sgx" runs in an SGX enclave under
// Gramine and asks its /dev/attestation files; "sim-snp", "sim-tdx",
// "sim-sgx" and "sim-cca" sign real-format evidence with the local
// simulation CA (package tee/sim); "nil" has no TEE and makes evidence of
// platform none. "auto" picks the first real backend usable, else nil; it
// never picks a simulation.
package tee

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// Backend is one way to obtain evidence.
type Backend interface {
	// Name is the --backend value: "nil", "sim-snp", "sim-tdx", "snp", "tdx".
	Name() string
	// Platform is the evidence.Platform* of the evidence it makes.
	Platform() string
	// Available returns nil when the backend is usable on this host, else
	// a one-line reason.
	Available() error
	// Evidence returns the raw report or quote over reportData and the
	// endorsement certificates (DER, leaf first; none for TDX, whose quote
	// carries its chain).
	Evidence(ctx context.Context, reportData [64]byte) (raw []byte, endorsements [][]byte, err error)
}

// Backend names.
const (
	NameNil    = "nil"
	NameSimSNP = "sim-snp"
	NameSimTDX = "sim-tdx"
	NameSNP    = "snp"
	NameTDX    = "tdx"
	NameSGX    = "sgx"
	NameCCA    = "cca"
	NameSimSGX = "sim-sgx"
	NameSimCCA = "sim-cca"
	NameAuto   = "auto"
)

// Names returns every backend name in preference order.
func Names() []string {
	return []string{NameSNP, NameTDX, NameSGX, NameCCA, NameSimSNP, NameSimTDX, NameSimSGX, NameSimCCA, NameNil}
}

// realNames are the hardware backends, in the order auto tries them.
var realNames = []string{NameSNP, NameTDX, NameSGX, NameCCA}

// New returns the backend called name with default settings, without
// checking that it is usable. "auto" is not a backend; see Open.
func New(name string) (Backend, error) {
	switch name {
	case NameNil:
		return Nil{}, nil
	case NameSNP:
		return &SNP{}, nil
	case NameTDX:
		return &TDX{}, nil
	case NameSimSNP:
		return NewSim(evidence.PlatformSNP, nil), nil
	case NameSimTDX:
		return NewSim(evidence.PlatformTDX, nil), nil
	case NameSGX:
		return &SGX{}, nil
	case NameCCA:
		return &CCA{}, nil
	case NameSimSGX:
		return NewSim(evidence.PlatformSGX, nil), nil
	case NameSimCCA:
		return NewSim(evidence.PlatformCCA, nil), nil
	}
	return nil, fmt.Errorf("unknown backend %q (want auto, %s)", name, strings.Join(Names(), ", "))
}

// Open returns the backend called name, checked to be usable here. "auto"
// returns snp, tdx, sgx or cca when usable, else nil; never a simulation.
func Open(name string) (Backend, error) {
	if name == NameAuto || name == "" {
		for _, n := range realNames {
			b, _ := New(n)
			if b.Available() == nil {
				return b, nil
			}
		}
		return Nil{}, nil
	}
	b, err := New(name)
	if err != nil {
		return nil, err
	}
	if err := b.Available(); err != nil {
		return nil, fmt.Errorf("backend %s: %w", name, err)
	}
	return b, nil
}

// Attest makes the evidence envelope of a keep start: report data over the
// keep's key (SPKI DER), the verifier's nonce and the workload digest,
// signed by b.
func Attest(ctx context.Context, b Backend, spki, nonce []byte, workloadDigest string) (*evidence.Envelope, error) {
	if len(spki) == 0 {
		return nil, errors.New("attest: no key")
	}
	if err := evidence.CheckDigest(workloadDigest); err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	rd := evidence.ReportData(spki, nonce, workloadDigest)
	raw, endorsements, err := b.Evidence(ctx, rd)
	if err != nil {
		return nil, fmt.Errorf("attest with backend %s: %w", b.Name(), err)
	}
	return &evidence.Envelope{
		Platform:       b.Platform(),
		Evidence:       raw,
		Endorsements:   endorsements,
		Key:            append([]byte(nil), spki...),
		Nonce:          append([]byte(nil), nonce...),
		WorkloadDigest: workloadDigest,
	}, nil
}

// Nil is the backend without a TEE: no report, platform none.
type Nil struct{}

var _ Backend = Nil{}

func (Nil) Name() string     { return NameNil }
func (Nil) Platform() string { return evidence.PlatformNone }
func (Nil) Available() error { return nil }

// Evidence returns no report: the nil backend proves nothing.
func (Nil) Evidence(context.Context, [64]byte) ([]byte, [][]byte, error) { return nil, nil, nil }

// Sim signs real-format evidence with a simulation CA.
type Sim struct {
	platform string
	CA       *sim.CA        // nil = sim.Default(), the user's CA, created on first use
	SNP      sim.SNPOptions // report options for PlatformSNP
	TDX      sim.TDXOptions // quote options for PlatformTDX
	SGX      sim.SGXOptions // quote options for PlatformSGX
	CCA      sim.CCAOptions // token options for PlatformCCA
}

// NewSim returns the simulated backend for platform (evidence.PlatformSNP,
// PlatformTDX, PlatformSGX or PlatformCCA) signing with ca; nil ca means
// the user's CA.
func NewSim(platform string, ca *sim.CA) *Sim { return &Sim{platform: platform, CA: ca} }

var _ Backend = (*Sim)(nil)

func (s *Sim) Name() string {
	switch s.platform {
	case evidence.PlatformTDX:
		return NameSimTDX
	case evidence.PlatformSGX:
		return NameSimSGX
	case evidence.PlatformCCA:
		return NameSimCCA
	}
	return NameSimSNP
}

func (s *Sim) Platform() string { return s.platform }

// Available checks that the simulation CA can be loaded or created.
func (s *Sim) Available() error {
	_, err := s.ca()
	return err
}

func (s *Sim) ca() (*sim.CA, error) {
	if s.CA != nil {
		return s.CA, nil
	}
	return sim.Default()
}

func (s *Sim) Evidence(ctx context.Context, rd [64]byte) ([]byte, [][]byte, error) {
	ca, err := s.ca()
	if err != nil {
		return nil, nil, err
	}
	switch s.platform {
	case evidence.PlatformSNP:
		return ca.SignSNP(rd, s.SNP)
	case evidence.PlatformTDX:
		q, err := ca.SignTDX(rd, s.TDX)
		return q, nil, err
	case evidence.PlatformSGX:
		q, err := ca.SignSGX(rd, s.SGX)
		return q, nil, err
	case evidence.PlatformCCA:
		t, err := ca.SignCCA(rd, s.CCA)
		return t, nil, err
	}
	return nil, nil, fmt.Errorf("simulated backend: unknown platform %q", s.platform)
}

// SimRoots returns the user's simulation roots (creating the CA if needed)
// and the path of the PEM file that holds them, for a policy to name.
func SimRoots() ([]*x509.Certificate, string, error) {
	ca, err := sim.Default()
	if err != nil {
		return nil, "", err
	}
	return ca.Roots(), ca.RootsPath(), nil
}

// exists reports whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
