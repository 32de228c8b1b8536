package tee

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

// DefaultGramineAttestation is the folder of Gramine's attestation pseudo-files.
const DefaultGramineAttestation = "/dev/attestation"

// SGX is the backend inside an SGX enclave under Gramine: the report data
// is written to <dir>/user_report_data and the DCAP quote read from
// <dir>/quote, after <dir>/attestation_type says "dcap" (Gramine,
// "Attestation and Secret Provisioning", /dev/attestation interface).
type SGX struct {
	// Dir is Gramine's attestation folder; "" = /dev/attestation. Tests
	// point it at a fake folder.
	Dir string
}

var _ Backend = (*SGX)(nil)

// gramineMu serialises quotes: the pseudo-files are one per enclave, so
// two keeps asking at once would read each other's quote.
var gramineMu sync.Mutex

// NewSGX returns the sgx backend reading Gramine's files in dir ("" = the default).
func NewSGX(dir string) *SGX { return &SGX{Dir: dir} }

func (*SGX) Name() string     { return NameSGX }
func (*SGX) Platform() string { return evidence.PlatformSGX }

func (s *SGX) dir() string {
	if s.Dir != "" {
		return s.Dir
	}
	return DefaultGramineAttestation
}

// Available checks that castellan runs under Gramine with DCAP attestation.
func (s *SGX) Available() error {
	t, err := os.ReadFile(filepath.Join(s.dir(), "attestation_type"))
	if err != nil {
		return fmt.Errorf("no %s/attestation_type: not inside a Gramine SGX enclave", s.dir())
	}
	if at := strings.TrimSpace(string(t)); at != "dcap" {
		return fmt.Errorf("%s/attestation_type is %q, want dcap (set sgx.remote_attestation = \"dcap\" in the manifest)", s.dir(), at)
	}
	return nil
}

// Evidence writes the report data and reads the quote Gramine's quoting
// enclave made over it. The quote carries its PCK chain.
func (s *SGX) Evidence(ctx context.Context, rd [64]byte) ([]byte, [][]byte, error) {
	if err := s.Available(); err != nil {
		return nil, nil, err
	}
	gramineMu.Lock()
	defer gramineMu.Unlock()
	ud := filepath.Join(s.dir(), "user_report_data")
	f, err := os.OpenFile(ud, os.O_WRONLY, 0)
	if err != nil {
		return nil, nil, err
	}
	_, werr := f.Write(rd[:])
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		return nil, nil, fmt.Errorf("%s: %w", ud, werr)
	}
	qp := filepath.Join(s.dir(), "quote")
	q, err := readBounded(qp, evidence.MaxEvidenceSize)
	if err != nil {
		return nil, nil, err
	}
	if len(q) == 0 {
		return nil, nil, fmt.Errorf("%s: empty quote", qp)
	}
	return q, nil, nil
}

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, max+1)
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			break
		}
	}
	if n > max {
		return nil, fmt.Errorf("%s: more than %d bytes", path, max)
	}
	return b[:n], nil
}
