package policy

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

// What the SGX and CCA platforms add to the policy and the measurement
// database (SEV-SNP and TDX need none of it; SGX shares tcb_statuses and
// require_collateral with TDX, platform.go):
//
//	[platforms.cca]
//	cpaks = ["cpaks.pem"]          # trusted CCA platform attestation keys
//	platform_software = ["<hex>"]  # accepted platform firmware measurements
//
//	[[measurement]]                # an SGX enclave by MRENCLAVE ...
//	platform = "sgx"
//	value = "<64 hex>"
//	[[measurement]]                # ... or by signer, product and lowest ISVSVN
//	platform = "sgx"
//	mrsigner = "<64 hex>"
//	isv_prod_id = 1
//	min_isv_svn = 2
//	[[measurement]]                # a CCA realm: RIM and, optionally, REMs
//	platform = "cca"
//	value = "<64, 96 or 128 hex>"
//	rems = ["<hex>", "<hex>", "<hex>", "<hex>"]

// measurementSizes are the byte lengths of a measurement by platform.
var measurementSizes = map[string][]int{
	evidence.PlatformSNP: {48},
	evidence.PlatformTDX: {48},
	evidence.PlatformSGX: {32},
	evidence.PlatformCCA: {32, 48, 64},
}

func hexSizes(sizes []int) string {
	var parts []string
	for _, n := range sizes {
		parts = append(parts, fmt.Sprintf("%d hex digits (%d bytes)", 2*n, n))
	}
	return strings.Join(parts, " or ")
}

// checkMeasurement checks one [[measurement]] entry and puts its hex
// values in lower case.
func checkMeasurement(e *Measurement) error {
	sizes, ok := measurementSizes[e.Platform]
	if !ok {
		return fmt.Errorf("platform %q is not snp, tdx, sgx or cca", e.Platform)
	}
	if e.Platform != evidence.PlatformSGX && (e.MRSigner != "" || e.ISVProdID != nil || e.MinISVSVN != 0) {
		return errors.New("mrsigner, isv_prod_id and min_isv_svn are for platform sgx")
	}
	if e.Platform != evidence.PlatformCCA && e.REMs != nil {
		return errors.New("rems are for platform cca")
	}
	for i, r := range e.rtmrs() {
		if *r == "" {
			continue
		}
		if e.Platform != evidence.PlatformTDX {
			return fmt.Errorf("rtmr%d is for platform tdx", i)
		}
		if b, err := hex.DecodeString(*r); err != nil || len(b) != 48 {
			return fmt.Errorf("rtmr%d must be 96 hex digits (48 bytes)", i)
		}
		*r = strings.ToLower(*r)
	}
	if e.Platform == evidence.PlatformSGX && e.Value == "" {
		raw, err := hex.DecodeString(e.MRSigner)
		if err != nil || len(raw) != 32 {
			return errors.New("an sgx entry needs value (MRENCLAVE) or mrsigner, 64 hex digits (32 bytes)")
		}
		if e.ISVProdID == nil {
			return errors.New("an sgx entry by mrsigner needs isv_prod_id")
		}
		e.MRSigner = strings.ToLower(e.MRSigner)
		return nil
	}
	if e.Platform == evidence.PlatformSGX && (e.MRSigner != "" || e.ISVProdID != nil || e.MinISVSVN != 0) {
		return errors.New("an sgx entry names either value (MRENCLAVE) or mrsigner, isv_prod_id and min_isv_svn")
	}
	e.Value = strings.ToLower(e.Value)
	raw, err := hex.DecodeString(e.Value)
	if err != nil || !slices.Contains(sizes, len(raw)) {
		return fmt.Errorf("value must be %s", hexSizes(sizes))
	}
	if e.REMs != nil {
		if len(e.REMs) != 4 {
			return fmt.Errorf("rems lists %d values, want 4", len(e.REMs))
		}
		for i, r := range e.REMs {
			b, err := hex.DecodeString(r)
			if err != nil || len(b) != len(raw) {
				return fmt.Errorf("rems %d must be %d hex digits, as long as value", i, 2*len(raw))
			}
			e.REMs[i] = strings.ToLower(r)
		}
	}
	return nil
}

// checkPlatformExtras checks the SGX and CCA keys of a [platforms.X] table
// and loads what they name.
func (s *Snapshot) checkPlatformExtras(file, name string, pl *Platform) error {
	at := fmt.Sprintf("%s: platforms.%s", file, name)
	if name != evidence.PlatformCCA && (pl.CPAKs != nil || pl.PlatformSoftware != nil) {
		return fmt.Errorf("%s: cpaks and platform_software are for platform cca", at)
	}
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(filepath.Dir(file), p)
	}
	for _, f := range pl.CPAKs {
		keys, err := readPublicKeys(resolve(f))
		if err != nil {
			return fmt.Errorf("%s.cpaks: %w", at, err)
		}
		s.CCAPlatformKeys = append(s.CCAPlatformKeys, keys...)
	}
	for i, v := range pl.PlatformSoftware {
		b, err := hex.DecodeString(v)
		if err != nil || (len(b) != 32 && len(b) != 48 && len(b) != 64) {
			return fmt.Errorf("%s.platform_software %d: want 64, 96 or 128 hex digits", at, i+1)
		}
		pl.PlatformSoftware[i] = strings.ToLower(v)
	}
	return nil
}

// readPublicKeys reads the PEM file of CPAKs: PUBLIC KEY blocks, or
// certificates whose keys are taken.
func readPublicKeys(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		switch blk.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			out = append(out, k)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			out = append(out, c.PublicKey)
		default:
			return nil, fmt.Errorf("%s: a %q PEM block, want PUBLIC KEY or CERTIFICATE", path, blk.Type)
		}
	}
	if len(bytes.TrimSpace(b)) != 0 || len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM public keys, or bytes that are not PEM", path)
	}
	return out, nil
}

// checkPlatformClaims makes the CCA decisions on verified claims beyond the
// shared ones: the platform's firmware. (SGX's TCB status is decided by
// the verifier with tcb_statuses, as TDX's is.)
func (s *Snapshot) checkPlatformClaims(pl *Platform, c *evidence.Claims) *Refusal {
	switch c.Platform {
	case evidence.PlatformCCA:
		if len(pl.PlatformSoftware) == 0 {
			if c.Simulated {
				return nil
			}
			return refuse(CheckTCB, "the policy lists no cca platform_software: the platform's firmware cannot be judged")
		}
		names := make([]string, 0, len(c.Identity))
		for k := range c.Identity {
			if strings.HasPrefix(k, "platform_sw.") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		for _, k := range names {
			v := hex.EncodeToString(c.Identity[k])
			if !slices.Contains(pl.PlatformSoftware, v) {
				return refuse(CheckTCB, "cca platform software component %s (%s) is not in platforms.cca.platform_software: firmware out of date or unknown", strings.TrimPrefix(k, "platform_sw."), v)
			}
		}
	}
	return nil
}

// checkSGXSigner looks for an SGX entry by signer that admits the enclave
// whose MRENCLAVE (mrenclave, hex) is not listed.
func (s *Snapshot) checkSGXSigner(c *evidence.Claims, mrenclave string) *Refusal {
	signer := hex.EncodeToString(c.Identity["mrsigner"])
	prod, svn := c.TCB["isv_prod_id"], c.TCB["isv_svn"]
	var low *Measurement
	for i := range s.SGXSigners {
		e := &s.SGXSigners[i]
		if e.MRSigner != signer || uint64(*e.ISVProdID) != prod {
			continue
		}
		if e.Revoked {
			return refuse(CheckRevoked, "sgx signer %s product %d (%s) is revoked", signer, prod, e.Name)
		}
		if svn >= uint64(e.MinISVSVN) {
			return nil
		}
		low = e
	}
	if low != nil {
		return refuse(CheckMeasurement, "sgx enclave of signer %s product %d has isv_svn %d, below the minimum %d", signer, prod, svn, low.MinISVSVN)
	}
	return refuse(CheckMeasurement, "sgx measurement %s (signer %s, product %d) is not in the measurement database", mrenclave, signer, prod)
}

// checkREMs compares a CCA realm's extensible measurements with its entry.
// checkRTMRs refuses a TDX quote whose runtime measurement registers
// differ from those its measurement database entry lists.
func checkRTMRs(c *evidence.Claims, m *Measurement) *Refusal {
	if c.Platform != evidence.PlatformTDX {
		return nil
	}
	for i, want := range m.rtmrs() {
		if *want == "" {
			continue
		}
		if got := c.Details[fmt.Sprintf("rtmr%d", i)]; got != *want {
			return refuse(CheckMeasurement, "tdx rtmr%d is %q, the measurement database entry %q expects %s", i, got, m.Name, *want)
		}
	}
	return nil
}

func checkREMs(c *evidence.Claims, m *Measurement) *Refusal {
	if c.Platform != evidence.PlatformCCA {
		return nil
	}
	for i := range 4 {
		got := c.Identity[fmt.Sprintf("rem.%d", i)]
		want := strings.Repeat("0", 2*len(got))
		if m.REMs != nil {
			want = m.REMs[i]
		}
		if hex.EncodeToString(got) != want {
			return refuse(CheckMeasurement, "cca realm extensible measurement %d is %x, the measurement database expects %s", i, got, want)
		}
	}
	return nil
}
