package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/uuid"
)

// SNPProductLine is the AMD product line the simulation claims: its names
// appear in the certificates (ARK-Milan, SEV-Milan) and its family/model in
// the report, which is how a verifier picks the trusted roots.
const SNPProductLine = "Milan"

// Milan B1: family 19h, model 01h, stepping 1.
const (
	snpFamily   = 0x19
	snpModel    = 0x01
	snpStepping = 0x01
	snpProduct  = "Milan-B1"
)

// SNPTCB is an SEV-SNP TCB_VERSION by component (Milan/Genoa layout).
type SNPTCB struct {
	Bootloader, TEE, SNP, Microcode uint8
}

// DefaultSNPTCB is the TCB a simulated report claims unless told otherwise.
var DefaultSNPTCB = SNPTCB{Bootloader: 4, TEE: 0, SNP: 22, Microcode: 213}

// Version returns the 64-bit TCB_VERSION.
func (t SNPTCB) Version() (uint64, error) {
	v, err := kds.ComposeTCBParts(kds.TCBParts{BlSpl: t.Bootloader, TeeSpl: t.TEE, SnpSpl: t.SNP, UcodeSpl: t.Microcode})
	return uint64(v), err
}

// SNPOptions shape a simulated SEV-SNP report. The zero value gives a
// report for this executable with the default TCB and debugging off; tests
// set fields to craft evidence a policy must refuse.
type SNPOptions struct {
	Measurement []byte  // 48 bytes; nil = Measurement() of this executable
	TCB         *SNPTCB // nil = DefaultSNPTCB
	Debug       bool    // set the guest policy's DEBUG bit
	GuestSVN    uint32
	HostData    []byte // up to 32 bytes
	// VLEK signs with the simulated cloud provider's VLEK (chain ARK →
	// ASVK → VLEK, endorsements VLEK, ASVK, ARK) instead of the VCEK.
	VLEK bool
	// VMPL is the privilege level of the guest code that asked for the
	// report (0, the most privileged, unless a test says otherwise).
	VMPL uint32
	// Edit, if set, changes the report's bytes before they are signed:
	// tests use it to craft fields (guest policy, platform info, firmware
	// versions, ID block digests) that a verifier's policy must refuse.
	Edit func(report []byte)
}

// SNP report layout offsets (SEV-SNP ABI specification, table "ATTESTATION_REPORT").
const (
	snpReportVersion = 3
	offVersion       = 0x00
	offGuestSVN      = 0x04
	offPolicy        = 0x08
	offVMPL          = 0x30
	offSigAlgo       = 0x34
	offCurrentTCB    = 0x38
	offPlatformInfo  = 0x40
	offSignerInfo    = 0x48
	offReportData    = 0x50
	offMeasurement   = 0x90
	offHostData      = 0xC0
	offReportID      = 0x140
	offReportedTCB   = 0x180
	offFMS           = 0x188
	offChipID        = 0x1A0
	offCommittedTCB  = 0x1E0
	offCurrentBuild  = 0x1E8
	offCommittedBld  = 0x1EC
	offLaunchTCB     = 0x1F0
)

// SignSNP returns a signed SEV-SNP ATTESTATION_REPORT (version 3, 0x4A0
// bytes) over reportData, and its endorsements: the VCEK certificate for the
// report's TCB, the ASK and the ARK, DER, leaf first.
func (ca *CA) SignSNP(reportData [64]byte, o SNPOptions) (report []byte, endorsements [][]byte, err error) {
	tcb := DefaultSNPTCB
	if o.TCB != nil {
		tcb = *o.TCB
	}
	tcbVersion, err := tcb.Version()
	if err != nil {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: %w", err)
	}
	m := o.Measurement
	if m == nil {
		if m, err = Measurement(); err != nil {
			return nil, nil, err
		}
	}
	if len(m) != abi.MeasurementSize {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: measurement is %d bytes, want %d", len(m), abi.MeasurementSize)
	}
	if len(o.HostData) > abi.HostDataSize {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: host data is %d bytes, want at most %d", len(o.HostData), abi.HostDataSize)
	}
	signer, key, ica := abi.VcekReportSigner, ca.vcekKey, ca.snpASK
	if o.VLEK {
		if ca.snpASVK == nil {
			return nil, nil, errors.New("simulated SEV-SNP report: this simulation CA has no VLEK chain (delete it to have a new one made)")
		}
		signer, key, ica = abi.VlekReportSigner, ca.vlekKey, ca.snpASVK
	}
	leaf, err := ca.endorsementFor(signer, tcbVersion)
	if err != nil {
		return nil, nil, err
	}

	r := make([]byte, abi.ReportSize)
	le := binary.LittleEndian
	le.PutUint32(r[offVersion:], snpReportVersion)
	le.PutUint32(r[offGuestSVN:], o.GuestSVN)
	// ABI 1.55, SMT allowed; the reserved bit 17 is set by SnpPolicyToBytes.
	le.PutUint64(r[offPolicy:], abi.SnpPolicyToBytes(abi.SnpPolicy{ABIMajor: 1, ABIMinor: 55, SMT: true, Debug: o.Debug}))
	if o.VMPL > 3 {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: VMPL %d, want 0 to 3", o.VMPL)
	}
	le.PutUint32(r[offVMPL:], o.VMPL)
	le.PutUint32(r[offSigAlgo:], abi.SignEcdsaP384Sha384)
	le.PutUint64(r[offCurrentTCB:], tcbVersion)
	le.PutUint64(r[offPlatformInfo:], 1) // SMT enabled
	le.PutUint32(r[offSignerInfo:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: signer}))
	copy(r[offReportData:], reportData[:])
	copy(r[offMeasurement:], m)
	copy(r[offHostData:], o.HostData)
	if _, err := io.ReadFull(rand.Reader, r[offReportID:offReportID+abi.ReportIDSize]); err != nil {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: %w", err)
	}
	le.PutUint64(r[offReportedTCB:], tcbVersion)
	r[offFMS], r[offFMS+1], r[offFMS+2] = snpFamily, snpModel, snpStepping
	copy(r[offChipID:], ca.chipID[:])
	le.PutUint64(r[offCommittedTCB:], tcbVersion)
	r[offCurrentBuild], r[offCurrentBuild+1], r[offCurrentBuild+2] = 21, 55, 1 // build, minor, major
	r[offCommittedBld], r[offCommittedBld+1], r[offCommittedBld+2] = 21, 55, 1
	le.PutUint64(r[offLaunchTCB:], tcbVersion)

	if o.Edit != nil {
		o.Edit(r)
	}
	h := sha512.Sum384(abi.SignedComponent(r))
	rr, ss, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: %w", err)
	}
	if err := abi.SetSignature(rr, ss, r); err != nil {
		return nil, nil, fmt.Errorf("simulated SEV-SNP report: %w", err)
	}
	return r, [][]byte{leaf.Raw, ica.Raw, ca.snpARK.Raw}, nil
}

// SNPCertTable returns endorsements in the AMD GUID table format that the
// kernel's extended report (configfs auxblob, SNP_GET_EXT_REPORT) carries.
// Fakes of those interfaces use it.
// A VLEK chain's table holds the VLEK and the ARK: the ASVK's GUID is the
// all-zero table terminator, so hosts cannot provision it.
func SNPCertTable(endorsements [][]byte) []byte {
	guids := []string{abi.VcekGUID, abi.AskGUID, abi.ArkGUID}
	if len(endorsements) > 0 {
		if c, err := x509.ParseCertificate(endorsements[0]); err == nil && c.Subject.CommonName == "SEV-VLEK" {
			guids = []string{abi.VlekGUID, "", abi.ArkGUID}
		}
	}
	t := abi.CertTable{}
	for i, der := range endorsements {
		if i < len(guids) && guids[i] != "" {
			t.Entries = append(t.Entries, abi.CertTableEntry{GUID: uuid.MustParse(guids[i]), RawCert: der})
		}
	}
	return t.Marshal()
}

// endorsementFor returns the VCEK or VLEK certificate for a TCB version,
// issuing it on first use: like AMD's KDS, the simulation has one
// certificate per TCB (and chip, for the VCEK) carrying the TCB in its
// extensions.
func (ca *CA) endorsementFor(signer abi.ReportSigner, tcb uint64) (*x509.Certificate, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	cache, parent, parentKey, pub, cn := ca.vceks, ca.snpASK, ca.askKey, ca.vcekKey.Public(), "SEV-VCEK"
	hwid, cspID := ca.chipID[:], ""
	if signer == abi.VlekReportSigner {
		cache, parent, parentKey, pub, cn = ca.vleks, ca.snpASVK, ca.asvkKey, ca.vlekKey.Public(), "SEV-VLEK"
		hwid, cspID = nil, "castellan-sim"
	}
	if c, ok := cache[tcb]; ok {
		return c, nil
	}
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(tcb))
	exts, err := endorsementExtensions(parts, hwid, cspID)
	if err != nil {
		return nil, err
	}
	sn, err := serial(rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:       sn,
		Subject:            amdName(cn, "0"),
		NotBefore:          notBefore(),
		NotAfter:           time.Now().AddDate(7, 0, 0),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		// Only KDS extensions (and the authority key ID): go-sev-guest
		// refuses any other, as AMD's certificates have none.
		ExtraExtensions: exts,
	}
	c, err := create(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		return nil, fmt.Errorf("simulated %s certificate: %w", cn, err)
	}
	cache[tcb] = c
	return c, nil
}

// endorsementExtensions builds the KDS extensions of a VCEK certificate
// (with the chip's HWID) or a VLEK certificate (with the provider's CSP_ID).
func endorsementExtensions(t kds.TCBParts, hwid []byte, cspID string) ([]pkix.Extension, error) {
	ints := []struct {
		id asn1.ObjectIdentifier
		v  uint8
	}{
		{kds.OidBlSpl, t.BlSpl}, {kds.OidTeeSpl, t.TeeSpl}, {kds.OidSnpSpl, t.SnpSpl},
		{kds.OidSpl4, t.Spl4}, {kds.OidSpl5, t.Spl5}, {kds.OidSpl6, t.Spl6}, {kds.OidSpl7, t.Spl7},
		{kds.OidUcodeSpl, t.UcodeSpl},
	}
	zero, _ := asn1.Marshal(0)
	product := snpProduct
	if hwid == nil {
		product = SNPProductLine // a VLEK is not bound to a stepping
	}
	name, err := asn1.MarshalWithParams(product, "ia5")
	if err != nil {
		return nil, err
	}
	exts := []pkix.Extension{{Id: kds.OidStructVersion, Value: zero}, {Id: kds.OidProductName1, Value: name}}
	for _, i := range ints {
		v, err := asn1.Marshal(int(i.v))
		if err != nil {
			return nil, err
		}
		exts = append(exts, pkix.Extension{Id: i.id, Value: v})
	}
	if hwid == nil {
		id, err := asn1.MarshalWithParams(cspID, "ia5")
		if err != nil {
			return nil, err
		}
		return append(exts, pkix.Extension{Id: kds.OidCspID, Value: id}), nil
	}
	h, err := asn1.Marshal(hwid)
	if err != nil {
		return nil, err
	}
	return append(exts, pkix.Extension{Id: kds.OidHwid, Value: h}), nil
}

// amdName is the subject form AMD's KDS uses. go-sev-guest requires these
// exact location and organization fields, so the simulation is marked in the
// subject serial number of the ARK and ASK instead (see generateSNP).
func amdName(cn, serialNumber string) pkix.Name {
	return pkix.Name{
		Country:            []string{"US"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		Organization:       []string{"Advanced Micro Devices"},
		OrganizationalUnit: []string{"Engineering"},
		CommonName:         cn,
		SerialNumber:       serialNumber,
	}
}

// amdCATemplate is the template of a simulated AMD CA certificate (ARK,
// ASK or ASVK): RSASSA-PSS with SHA-384, 25 years from start, a serial
// number that says "castellan-sim", and key usage cert sign plus extra.
func amdCATemplate(r io.Reader, cn string, start time.Time, key *rsa.PrivateKey, extra x509.KeyUsage) (*x509.Certificate, error) {
	sn, err := serial(r)
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber:          sn,
		Subject:               amdName(cn, "castellan-sim-"+sn.Text(16)),
		NotBefore:             start,
		NotAfter:              start.AddDate(25, 0, 0),
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
		KeyUsage:              x509.KeyUsageCertSign | extra,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          skid(key.Public()),
	}, nil
}

// generateSNP makes the ARK → ASK chain (RSA, RSASSA-PSS with SHA-384, as
// AMD's) and the VCEK key (ECDSA P-384). AMD's ARK and ASK are RSA-4096; the
// simulation uses RSA-2048 to keep generation quick, since the key guards
// nothing of value. The subject serial numbers say "castellan-sim" so that a
// human reading the certificates is not misled.
func (ca *CA) generateSNP(r io.Reader) error {
	arkKey, err := rsa.GenerateKey(r, 2048)
	if err != nil {
		return err
	}
	askKey, err := rsa.GenerateKey(r, 2048)
	if err != nil {
		return err
	}
	vcekKey, err := ecdsa.GenerateKey(elliptic.P384(), r)
	if err != nil {
		return err
	}
	start := notBefore()
	arkT, err := amdCATemplate(r, "ARK-"+SNPProductLine, start, arkKey, x509.KeyUsageCRLSign)
	if err != nil {
		return err
	}
	ark, err := create(r, arkT, arkT, arkKey.Public(), arkKey)
	if err != nil {
		return err
	}
	askT, err := amdCATemplate(r, "SEV-"+SNPProductLine, start, askKey, 0)
	if err != nil {
		return err
	}
	ask, err := create(r, askT, ark, askKey.Public(), arkKey)
	if err != nil {
		return err
	}
	asvkKey, err := rsa.GenerateKey(r, 2048)
	if err != nil {
		return err
	}
	vlekKey, err := ecdsa.GenerateKey(elliptic.P384(), r)
	if err != nil {
		return err
	}
	asvkT, err := amdCATemplate(r, "SEV-VLEK-"+SNPProductLine, start, asvkKey, 0)
	if err != nil {
		return err
	}
	asvk, err := create(r, asvkT, ark, asvkKey.Public(), arkKey)
	if err != nil {
		return err
	}
	ca.snpARK, ca.arkKey, ca.snpASK, ca.askKey, ca.vcekKey = ark, arkKey, ask, askKey, vcekKey
	ca.snpASVK, ca.asvkKey, ca.vlekKey = asvk, asvkKey, vlekKey
	return nil
}
