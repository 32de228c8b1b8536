package kbs

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/internal/strictjson"
	"github.com/google/uuid"
)

// The SEV-SNP evidence of Confidential Containers' guest components: the
// snp attester (attestation-agent/attester/src/snp) sends
//
//	{"attestation_report": AttestationReport, "cert_chain": [CertTableEntry...] | null}
//
// where both types are the virtee sev crate's (6.3 in guest-components,
// 7.1 in Trustee's verifier; the same JSON), written by serde_json: byte
// arrays as arrays of numbers, GuestPolicy, PlatformInfo and KeyInfo as
// their integer, TcbVersion as {fmc, bootloader, tee, snp, microcode},
// Version as {major, minor, build}, the signature as {r, s} of 72 bytes
// each, Option as null, CertType as "VCEK", "ASK", ... or {"OTHER": GUID}.
//
// The JSON carries every field of the binary ATTESTATION_REPORT but not
// its reserved bytes. The verifier (Trustee's and ours) checks the
// signature over the binary report the crate writes back with reserved
// bytes zero, so sevToReport does the same, following the crate's
// Encoder: the report then goes through the same verification as a
// binary one. reportToSEV is the inverse for a keep sending its evidence
// to a Trustee KBS; it refuses a report the JSON cannot carry exactly.

const snpReportSize = 0x4A0

// sevEvidence is the snp attester's evidence.
type sevEvidence struct {
	Report    sevReport       `json:"attestation_report"`
	CertChain *[]sevCertEntry `json:"cert_chain"`
}

// sevReport is sev::firmware::guest::AttestationReport.
type sevReport struct {
	Version          uint32       `json:"version"`
	GuestSVN         uint32       `json:"guest_svn"`
	Policy           uint64       `json:"policy"`
	FamilyID         byteArray    `json:"family_id"`
	ImageID          byteArray    `json:"image_id"`
	VMPL             uint32       `json:"vmpl"`
	SigAlgo          uint32       `json:"sig_algo"`
	CurrentTCB       sevTCB       `json:"current_tcb"`
	PlatInfo         uint64       `json:"plat_info"`
	KeyInfo          uint32       `json:"key_info"`
	ReportData       byteArray    `json:"report_data"`
	Measurement      byteArray    `json:"measurement"`
	HostData         byteArray    `json:"host_data"`
	IDKeyDigest      byteArray    `json:"id_key_digest"`
	AuthorKeyDigest  byteArray    `json:"author_key_digest"`
	ReportID         byteArray    `json:"report_id"`
	ReportIDMA       byteArray    `json:"report_id_ma"`
	ReportedTCB      sevTCB       `json:"reported_tcb"`
	CPUIDFamID       *uint8       `json:"cpuid_fam_id"`
	CPUIDModID       *uint8       `json:"cpuid_mod_id"`
	CPUIDStep        *uint8       `json:"cpuid_step"`
	ChipID           byteArray    `json:"chip_id"`
	CommittedTCB     sevTCB       `json:"committed_tcb"`
	Current          sevVersion   `json:"current"`
	Committed        sevVersion   `json:"committed"`
	LaunchTCB        sevTCB       `json:"launch_tcb"`
	LaunchMitVector  *uint64      `json:"launch_mit_vector"`
	CurrentMitVector *uint64      `json:"current_mit_vector"`
	Signature        sevSignature `json:"signature"`
}

// sevTCB is sev::firmware::host::TcbVersion: fmc is set on Turin only.
type sevTCB struct {
	FMC        *uint8 `json:"fmc"`
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// sevVersion is sev::firmware::guest::Version (firmware build numbers).
type sevVersion struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
	Build uint8 `json:"build"`
}

// sevSignature is sev::certs::snp::ecdsa::Signature: r and s as they sit
// in the report (little-endian, 72 bytes each).
type sevSignature struct {
	R byteArray `json:"r"`
	S byteArray `json:"s"`
}

// sevCertEntry is sev::firmware::host::CertTableEntry.
type sevCertEntry struct {
	CertType certType  `json:"cert_type"`
	Data     byteArray `json:"data"`
}

// decodeAll decodes the JSON value raw into the struct v points to,
// strictly and through the whole tree: in every object each field present
// but the pointer (Option) ones, which serde reads as None when missing
// (sev crates before version 5 support lack the mitigation vectors), null
// only for those, no unknown members, nothing after the value. Errors name
// the path to the field.
func decodeAll(raw []byte, v any) error {
	return decodeValue(raw, reflect.ValueOf(v).Elem())
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func decodeValue(raw []byte, v reflect.Value) error {
	if v.Addr().Type().Implements(unmarshalerType) {
		// raw is valid JSON (its parent was decoded from it): the
		// Unmarshaler reads it without encoding/json checking it again.
		return v.Addr().Interface().(json.Unmarshaler).UnmarshalJSON(raw)
	}
	switch v.Kind() {
	case reflect.Pointer:
		if string(bytes.TrimSpace(raw)) == "null" {
			v.SetZero()
			return nil
		}
		v.Set(reflect.New(v.Type().Elem()))
		return decodeValue(raw, v.Elem())
	case reflect.Slice:
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return err
		}
		if elems == nil {
			return errors.New("null where an array is expected")
		}
		v.Set(reflect.MakeSlice(v.Type(), len(elems), len(elems)))
		for i, e := range elems {
			if err := decodeValue(e, v.Index(i)); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return nil
	case reflect.Struct:
	default:
		return json.Unmarshal(raw, v.Addr().Interface())
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if m == nil {
		return errors.New("null where an object is expected")
	}
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		raw, ok := m[name]
		if !ok && f.Type.Kind() == reflect.Pointer {
			continue // serde reads a missing Option as None
		}
		if !ok {
			return fmt.Errorf("field %q is missing", name)
		}
		delete(m, name)
		if f.Type.Kind() != reflect.Pointer && string(bytes.TrimSpace(raw)) == "null" {
			return fmt.Errorf("field %q is null", name)
		}
		if err := decodeValue(raw, v.Field(i)); err != nil {
			if strings.HasPrefix(err.Error(), "[") {
				return fmt.Errorf("%s%w", name, err)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	for k := range m {
		return fmt.Errorf("unknown field %q", clipString(k))
	}
	return nil
}

// byteArray is a Rust byte array or Vec<u8> as serde_json writes it: a
// JSON array of numbers 0 to 255 (never a base64 string).
type byteArray []byte

func (a byteArray) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 2+4*len(a))
	b = append(b, '[')
	for i, x := range a {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(x), 10)
	}
	return append(b, ']'), nil
}

// UnmarshalJSON reads the array by hand: b is a JSON value already
// checked by encoding/json, and reading numbers through reflection costs
// ten times more on certificates of a few thousand bytes.
func (a *byteArray) UnmarshalJSON(b []byte) error {
	errForm := errors.New("a byte array must be a JSON array of numbers 0 to 255")
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return errForm
	}
	out := make([]byte, 0, len(b)/4)
	b = bytes.TrimSpace(b[1 : len(b)-1])
	for len(b) > 0 {
		n, i := 0, 0
		for i < len(b) && b[i] >= '0' && b[i] <= '9' && n <= 255 {
			n = n*10 + int(b[i]-'0')
			i++
		}
		if i == 0 || n > 255 || (i > 1 && b[0] == '0') {
			return fmt.Errorf("%w: element %d is not one", errForm, len(out))
		}
		out = append(out, byte(n))
		b = bytes.TrimSpace(b[i:])
		if len(b) > 0 {
			if b[0] != ',' {
				return fmt.Errorf("%w: element %d is not one", errForm, len(out)-1)
			}
			b = bytes.TrimSpace(b[1:])
			if len(b) == 0 {
				return errForm
			}
		}
	}
	*a = out
	return nil
}

// Certificate GUIDs of the AMD GHCB specification (the extended guest
// request's certificate table), by the sev crate's CertType names.
var certGUIDs = map[string]string{
	"ARK":   "c0b406a4-a803-4952-9743-3fb6014cd0ae",
	"ASK":   "4ab7b379-bbac-4fe4-a02f-05aef327c782",
	"VCEK":  "63da758d-e664-4564-adc5-f4b93be8accd",
	"VLEK":  "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
	"CRL":   "92f81bc3-5811-4d3d-97ff-d19f88dc67ea",
	"Empty": "00000000-0000-0000-0000-000000000000",
}

// certType is sev's CertType: a variant name, or {"OTHER": GUID} for a
// GUID the crate does not name. Name holds the variant ("OTHER" too),
// GUID the GUID for OTHER.
type certType struct {
	Name string
	GUID uuid.UUID
}

func (c certType) MarshalJSON() ([]byte, error) {
	if c.Name == "OTHER" {
		return json.Marshal(map[string]string{"OTHER": c.GUID.String()})
	}
	return json.Marshal(c.Name)
}

func (c *certType) UnmarshalJSON(b []byte) error {
	var name string
	if err := json.Unmarshal(b, &name); err == nil {
		if _, ok := certGUIDs[name]; !ok {
			return fmt.Errorf("%q is not one of ARK, ASK, VCEK, VLEK, CRL, Empty or {\"OTHER\": GUID}", clipString(name))
		}
		*c = certType{Name: name}
		return nil
	}
	var other struct {
		OTHER *string `json:"OTHER"`
	}
	if err := strictjson.Decode(b, &other); err != nil || other.OTHER == nil {
		return errors.New("neither a name nor {\"OTHER\": GUID}")
	}
	g, err := uuid.Parse(*other.OTHER)
	if err != nil || len(*other.OTHER) != 36 {
		return fmt.Errorf("OTHER: %q is not a GUID", clipString(*other.OTHER))
	}
	// serde writes a known GUID by its name: OTHER with one is not the
	// crate's output.
	for n, s := range certGUIDs {
		if g.String() == s {
			return fmt.Errorf("OTHER holds the GUID of %s", n)
		}
	}
	*c = certType{Name: "OTHER", GUID: g}
	return nil
}

func clipString(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// The binary ATTESTATION_REPORT (SEV-SNP firmware ABI, table 23): offsets
// of the fields the JSON carries; everything else is reserved.
const (
	snpOffFamilyID     = 0x10
	snpOffImageID      = 0x20
	snpOffVMPL         = 0x30
	snpOffSigAlgo      = 0x34
	snpOffCurrentTCB   = 0x38
	snpOffPlatInfo     = 0x40
	snpOffKeyInfo      = 0x48
	snpOffReportData   = 0x50
	snpOffMeasurement  = 0x90
	snpOffHostData     = 0xC0
	snpOffIDKeyDigest  = 0xE0
	snpOffAuthorKey    = 0x110
	snpOffReportID     = 0x140
	snpOffReportIDMA   = 0x160
	snpOffReportedTCB  = 0x180
	snpOffCPUID        = 0x188 // family, model, stepping (version 3 on)
	snpOffChipID       = 0x1A0
	snpOffCommittedTCB = 0x1E0
	snpOffCurrent      = 0x1E8 // build, minor, major
	snpOffCommitted    = 0x1EC
	snpOffLaunchTCB    = 0x1F0
	snpOffLaunchMit    = 0x1F8 // version 5 on
	snpOffCurrentMit   = 0x200
	snpOffSignature    = 0x2A0 // r, s: 72 bytes each
)

// snpLayout is what the sev crate derives from a report to lay it out:
// the report variant (2; 3 and 4; 5 and later) and whether the TCB
// versions use Turin's layout.
type snpLayout struct {
	variant int
	turin   bool
}

// layoutOf follows sev's ReportVariant::from_bytes and its generation
// detection: version 2 reports tell Turin by the chip ID (a Turin chip ID
// is 8 bytes), later ones by CPUID family and model.
func layoutOf(version uint32, fam, model *uint8, chipID []byte) (snpLayout, error) {
	var l snpLayout
	switch {
	case version < 2:
		return l, fmt.Errorf("report version %d is not supported (2 or later)", version)
	case version == 2:
		l.variant = 2
		if len(chipID) == 64 && allZero(chipID) {
			return l, errors.New("a version 2 report with a masked chip ID (MASK_CHIP_ID): the sev crate cannot tell its processor generation")
		}
		l.turin = len(chipID) == 64 && allZero(chipID[8:])
		return l, nil
	case version <= 4:
		l.variant = 3
	default:
		l.variant = 5
	}
	if fam == nil || model == nil {
		return l, fmt.Errorf("a version %d report without CPUID family and model", version)
	}
	switch f, m := *fam, *model; {
	case f == 0x19 && (m <= 0x0F || (m >= 0x10 && m <= 0x1F) || (m >= 0xA0 && m <= 0xAF)): // Milan, Genoa
	case f == 0x1A && m <= 0x11:
		l.turin = true
	default:
		return l, fmt.Errorf("CPUID family %#x model %#x is not an SEV-SNP processor the sev crate knows (Milan, Genoa, Turin)", f, m)
	}
	return l, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// sevToReport writes the binary report the sev crate's Encoder writes for
// r, refusing fields of the wrong length and values the layout has no
// place for.
func sevToReport(r *sevReport) ([]byte, error) {
	l, err := layoutOf(r.Version, r.CPUIDFamID, r.CPUIDModID, r.ChipID)
	if err != nil {
		return nil, err
	}
	out := make([]byte, snpReportSize)
	le := binary.LittleEndian
	le.PutUint32(out[0:], r.Version)
	le.PutUint32(out[4:], r.GuestSVN)
	le.PutUint64(out[8:], r.Policy)
	le.PutUint32(out[snpOffVMPL:], r.VMPL)
	le.PutUint32(out[snpOffSigAlgo:], r.SigAlgo)
	le.PutUint64(out[snpOffPlatInfo:], r.PlatInfo)
	le.PutUint32(out[snpOffKeyInfo:], r.KeyInfo)
	for _, f := range []struct {
		name string
		off  int
		v    byteArray
		size int
	}{
		{"family_id", snpOffFamilyID, r.FamilyID, 16},
		{"image_id", snpOffImageID, r.ImageID, 16},
		{"report_data", snpOffReportData, r.ReportData, 64},
		{"measurement", snpOffMeasurement, r.Measurement, 48},
		{"host_data", snpOffHostData, r.HostData, 32},
		{"id_key_digest", snpOffIDKeyDigest, r.IDKeyDigest, 48},
		{"author_key_digest", snpOffAuthorKey, r.AuthorKeyDigest, 48},
		{"report_id", snpOffReportID, r.ReportID, 32},
		{"report_id_ma", snpOffReportIDMA, r.ReportIDMA, 32},
		{"chip_id", snpOffChipID, r.ChipID, 64},
		{"signature.r", snpOffSignature, r.Signature.R, 72},
		{"signature.s", snpOffSignature + 72, r.Signature.S, 72},
	} {
		if len(f.v) != f.size {
			return nil, fmt.Errorf("%s is %d bytes, want %d", f.name, len(f.v), f.size)
		}
		copy(out[f.off:], f.v)
	}
	for _, t := range []struct {
		name string
		off  int
		tcb  sevTCB
	}{
		{"current_tcb", snpOffCurrentTCB, r.CurrentTCB},
		{"reported_tcb", snpOffReportedTCB, r.ReportedTCB},
		{"committed_tcb", snpOffCommittedTCB, r.CommittedTCB},
		{"launch_tcb", snpOffLaunchTCB, r.LaunchTCB},
	} {
		b := out[t.off : t.off+8]
		switch {
		case l.turin && t.tcb.FMC == nil:
			return nil, fmt.Errorf("%s: a Turin TCB version without fmc", t.name)
		case !l.turin && t.tcb.FMC != nil:
			return nil, fmt.Errorf("%s: fmc is set but the report is not from a Turin processor", t.name)
		case l.turin:
			b[0], b[1], b[2], b[3], b[7] = *t.tcb.FMC, t.tcb.Bootloader, t.tcb.TEE, t.tcb.SNP, t.tcb.Microcode
		default:
			b[0], b[1], b[6], b[7] = t.tcb.Bootloader, t.tcb.TEE, t.tcb.SNP, t.tcb.Microcode
		}
	}
	cpuid := []*uint8{r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep}
	for i, name := range []string{"cpuid_fam_id", "cpuid_mod_id", "cpuid_step"} {
		switch {
		case l.variant == 2 && cpuid[i] != nil:
			return nil, fmt.Errorf("%s is set in a version 2 report (which has no CPUID fields)", name)
		case l.variant != 2 && cpuid[i] == nil:
			return nil, fmt.Errorf("%s is null in a version %d report", name, r.Version)
		case cpuid[i] != nil:
			out[snpOffCPUID+i] = *cpuid[i]
		}
	}
	for _, v := range []struct {
		name string
		off  int
		ver  sevVersion
	}{{"current", snpOffCurrent, r.Current}, {"committed", snpOffCommitted, r.Committed}} {
		out[v.off], out[v.off+1], out[v.off+2] = v.ver.Build, v.ver.Minor, v.ver.Major
	}
	mit := []*uint64{r.LaunchMitVector, r.CurrentMitVector}
	for i, name := range []string{"launch_mit_vector", "current_mit_vector"} {
		switch {
		case l.variant != 5 && mit[i] != nil:
			return nil, fmt.Errorf("%s is set in a version %d report (version 5 added it)", name, r.Version)
		case l.variant == 5 && mit[i] == nil:
			return nil, fmt.Errorf("%s is null in a version %d report", name, r.Version)
		case mit[i] != nil:
			le.PutUint64(out[snpOffLaunchMit+8*i:], *mit[i])
		}
	}
	return out, nil
}

// reportToSEV reads a binary report as the sev crate's Decoder does. It
// refuses a report whose bytes the JSON cannot carry (reserved bytes
// set, fields of a layout the report's version does not have), since the
// receiver would verify a different report.
func reportToSEV(b []byte) (*sevReport, error) {
	if len(b) != snpReportSize {
		return nil, fmt.Errorf("SEV-SNP report is %d bytes, want %d", len(b), snpReportSize)
	}
	le := binary.LittleEndian
	r := &sevReport{
		Version:         le.Uint32(b[0:]),
		GuestSVN:        le.Uint32(b[4:]),
		Policy:          le.Uint64(b[8:]),
		FamilyID:        bytes.Clone(b[snpOffFamilyID : snpOffFamilyID+16]),
		ImageID:         bytes.Clone(b[snpOffImageID : snpOffImageID+16]),
		VMPL:            le.Uint32(b[snpOffVMPL:]),
		SigAlgo:         le.Uint32(b[snpOffSigAlgo:]),
		PlatInfo:        le.Uint64(b[snpOffPlatInfo:]),
		KeyInfo:         le.Uint32(b[snpOffKeyInfo:]),
		ReportData:      bytes.Clone(b[snpOffReportData : snpOffReportData+64]),
		Measurement:     bytes.Clone(b[snpOffMeasurement : snpOffMeasurement+48]),
		HostData:        bytes.Clone(b[snpOffHostData : snpOffHostData+32]),
		IDKeyDigest:     bytes.Clone(b[snpOffIDKeyDigest : snpOffIDKeyDigest+48]),
		AuthorKeyDigest: bytes.Clone(b[snpOffAuthorKey : snpOffAuthorKey+48]),
		ReportID:        bytes.Clone(b[snpOffReportID : snpOffReportID+32]),
		ReportIDMA:      bytes.Clone(b[snpOffReportIDMA : snpOffReportIDMA+32]),
		ChipID:          bytes.Clone(b[snpOffChipID : snpOffChipID+64]),
		Current:         sevVersion{Build: b[snpOffCurrent], Minor: b[snpOffCurrent+1], Major: b[snpOffCurrent+2]},
		Committed:       sevVersion{Build: b[snpOffCommitted], Minor: b[snpOffCommitted+1], Major: b[snpOffCommitted+2]},
		Signature: sevSignature{R: bytes.Clone(b[snpOffSignature : snpOffSignature+72]),
			S: bytes.Clone(b[snpOffSignature+72 : snpOffSignature+144])},
	}
	if r.Version > 2 {
		f, m, s := b[snpOffCPUID], b[snpOffCPUID+1], b[snpOffCPUID+2]
		r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep = &f, &m, &s
	}
	l, err := layoutOf(r.Version, r.CPUIDFamID, r.CPUIDModID, r.ChipID)
	if err != nil {
		return nil, err
	}
	if l.variant == 5 {
		lm, cm := le.Uint64(b[snpOffLaunchMit:]), le.Uint64(b[snpOffCurrentMit:])
		r.LaunchMitVector, r.CurrentMitVector = &lm, &cm
	}
	for _, t := range []struct {
		off int
		tcb *sevTCB
	}{
		{snpOffCurrentTCB, &r.CurrentTCB}, {snpOffReportedTCB, &r.ReportedTCB},
		{snpOffCommittedTCB, &r.CommittedTCB}, {snpOffLaunchTCB, &r.LaunchTCB},
	} {
		x := b[t.off : t.off+8]
		if l.turin {
			fmc := x[0]
			*t.tcb = sevTCB{FMC: &fmc, Bootloader: x[1], TEE: x[2], SNP: x[3], Microcode: x[7]}
		} else {
			*t.tcb = sevTCB{Bootloader: x[0], TEE: x[1], SNP: x[6], Microcode: x[7]}
		}
	}
	back, err := sevToReport(r)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(back, b) {
		i := 0
		for back[i] == b[i] {
			i++
		}
		return nil, fmt.Errorf("SEV-SNP report byte %#x is reserved but set: the sev crate's JSON form cannot carry it", i)
	}
	return r, nil
}

// Signing keys in the report's KEY_INFO (bits 4:2).
const (
	snpSignerVCEK = 0
	snpSignerVLEK = 1
)

// parseSEVEvidence decodes the snp attester's evidence into the binary
// report and Castellan's endorsements (DER, leaf first): the VCEK or VLEK
// entry of cert_chain, then the ASK (ASVK for a VLEK) and the ARK. CRL
// and OTHER entries are ignored, as Trustee's verifier ignores them; a
// null cert_chain gives no endorsements (the verifier then fetches the
// VCEK from AMD if it may).
func parseSEVEvidence(raw []byte) ([]byte, [][]byte, error) {
	var ev sevEvidence
	if err := decodeAll(raw, &ev); err != nil {
		return nil, nil, err
	}
	report, err := sevToReport(&ev.Report)
	if err != nil {
		return nil, nil, fmt.Errorf("attestation_report: %w", err)
	}
	if ev.CertChain == nil {
		return report, nil, nil
	}
	found := map[string][]byte{}
	for i, e := range *ev.CertChain {
		switch e.CertType.Name {
		case "CRL", "OTHER":
			continue
		case "Empty":
			return nil, nil, fmt.Errorf("cert_chain[%d]: an Empty entry (the table's terminator) is not a certificate", i)
		}
		if len(e.Data) == 0 {
			return nil, nil, fmt.Errorf("cert_chain[%d]: %s with no data", i, e.CertType.Name)
		}
		if found[e.CertType.Name] != nil {
			return nil, nil, fmt.Errorf("cert_chain[%d]: a second %s", i, e.CertType.Name)
		}
		found[e.CertType.Name] = e.Data
	}
	want, other := "VCEK", "VLEK"
	if (binary.LittleEndian.Uint32(report[snpOffKeyInfo:])>>2)&7 == snpSignerVLEK {
		want, other = "VLEK", "VCEK"
	}
	if found[want] == nil {
		if found[other] != nil {
			return nil, nil, fmt.Errorf("cert_chain holds a %s but the report is signed by the %s", other, want)
		}
		return nil, nil, fmt.Errorf("cert_chain has no %s entry (a chain, if sent, must hold the key that signed the report)", want)
	}
	if found[other] != nil {
		return nil, nil, fmt.Errorf("cert_chain holds both a VCEK and a VLEK")
	}
	end := [][]byte{found[want]}
	// Castellan's endorsements are positional (leaf, ASK, ARK): without
	// an ASK the ARK has no place, and the verifier's roots supply both.
	if found["ASK"] != nil {
		end = append(end, found["ASK"])
		if found["ARK"] != nil {
			end = append(end, found["ARK"])
		}
	}
	return report, end, nil
}

// marshalSEVEvidence writes a binary report and its endorsements (leaf,
// ASK or ASVK, ARK) as the snp attester does, for a Trustee KBS.
func marshalSEVEvidence(report []byte, endorsements [][]byte) (json.RawMessage, error) {
	r, err := reportToSEV(report)
	if err != nil {
		return nil, err
	}
	if len(endorsements) > 3 {
		return nil, fmt.Errorf("%d endorsements, want at most 3 (VCEK or VLEK, ASK, ARK)", len(endorsements))
	}
	leaf := "VCEK"
	switch (r.KeyInfo >> 2) & 7 {
	case snpSignerVCEK:
	case snpSignerVLEK:
		leaf = "VLEK"
	default:
		return nil, fmt.Errorf("SEV-SNP report signed by key %d, not the VCEK or VLEK", (r.KeyInfo>>2)&7)
	}
	ev := sevEvidence{Report: *r}
	if len(endorsements) > 0 {
		chain := []sevCertEntry{}
		for i, der := range endorsements {
			chain = append(chain, sevCertEntry{CertType: certType{Name: []string{leaf, "ASK", "ARK"}[i]}, Data: der})
		}
		ev.CertChain = &chain
	}
	return json.Marshal(ev)
}
