package verify

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Checks a TDX quote's fields and collateral fail.
const (
	// CheckTCBStatus: Intel's TCB info or QE identity gives the platform a
	// TCB status the policy does not accept.
	CheckTCBStatus = "tcb_status"
	// CheckTDFields: a TD field (RTMR, MRCONFIGID, MROWNER, MROWNERCONFIG,
	// XFAM, TD attributes) is not what the policy requires.
	CheckTDFields = "td_fields"
)

// TD attribute bits (Intel TDX Module ABI, TDINFO_STRUCT.ATTRIBUTES).
const (
	tdAttrSEPTVEDisable = 1 << 28
	tdAttrMigratable    = 1 << 29
)

// TDXPolicy is what the caller's policy decides on a TDX quote's own fields
// and on Intel's verdict about the platform, beyond the signature chain and
// the claims Snapshot.Check sees (MRTD, TCB minimums, debug). The zero value
// is the safe default: TCB status UpToDate only; SEPT_VE_DISABLE set; not
// migratable; RTMRs and owner fields any (the claims show them).
type TDXPolicy struct {
	// TCBStatuses are the TCB statuses accepted from Intel's TCB info (for
	// the TDX module and platform) and QE identity: "UpToDate",
	// "SWHardeningNeeded", "ConfigurationNeeded",
	// "ConfigurationAndSWHardeningNeeded", "OutOfDate",
	// "OutOfDateConfigurationNeeded". Empty: UpToDate only. "Revoked" is
	// never accepted.
	TCBStatuses []string
	// AllowSEPTVE accepts a TD without SEPT_VE_DISABLE, in which EPT
	// violations reach the guest as #VE the host can provoke.
	AllowSEPTVE bool
	// AllowMigratable accepts a TD that can be migrated (its memory moved
	// to another platform by a migration TD).
	AllowMigratable bool
	// RTMRs are the expected runtime measurement registers, by index; a nil
	// entry (or a short list) is not checked.
	RTMRs [4][]byte
	// MRConfigID, MROwner and MROwnerConfig are the expected values (48
	// bytes each); nil: any.
	MRConfigID, MROwner, MROwnerConfig []byte
	// XFAM is the expected XFAM (the extended features the TD may use);
	// nil: any.
	XFAM []byte
}

func (p *TDXPolicy) statuses() []string {
	if len(p.TCBStatuses) == 0 {
		return []string{"UpToDate"}
	}
	return p.TCBStatuses
}

// acceptStatus decides on a TCB status from Intel's collateral.
func (p *TDXPolicy) acceptStatus(what, status string) error {
	if status == "Revoked" || !slices.Contains(p.statuses(), status) {
		return fail(CheckTCBStatus, "Intel's %s gives TCB status %s; the policy accepts %s", what, status, strings.Join(p.statuses(), ", "))
	}
	return nil
}

// tdBody is what the TDX v4 and v5 quote bodies share.
type tdBody interface {
	tdQuoteBody
	GetMrSeam() []byte
	GetXfam() []byte
	GetMrConfigId() []byte
	GetMrOwner() []byte
	GetMrOwnerConfig() []byte
	GetRtmrs() [][]byte
}

// checkTDFields decides on a verified quote body's fields and returns them
// as claim details.
func checkTDFields(b tdBody, p *TDXPolicy) (map[string]string, error) {
	var attrs uint64
	if a := b.GetTdAttributes(); len(a) == 8 {
		attrs = binary.LittleEndian.Uint64(a)
	}
	if attrs&tdAttrSEPTVEDisable == 0 && !p.AllowSEPTVE {
		return nil, fail(CheckTDFields, "TD attributes %#x: SEPT_VE_DISABLE is not set (the host could inject #VE); the policy requires it", attrs)
	}
	if attrs&tdAttrMigratable != 0 && !p.AllowMigratable {
		return nil, fail(CheckTDFields, "TD attributes %#x: the TD is MIGRATABLE; the policy does not allow it", attrs)
	}
	want := []struct {
		name      string
		got, want []byte
	}{
		{"MRCONFIGID", b.GetMrConfigId(), p.MRConfigID},
		{"MROWNER", b.GetMrOwner(), p.MROwner},
		{"MROWNERCONFIG", b.GetMrOwnerConfig(), p.MROwnerConfig},
		{"XFAM", b.GetXfam(), p.XFAM},
	}
	rtmrs := b.GetRtmrs()
	for i, r := range p.RTMRs {
		if r == nil {
			continue
		}
		var got []byte
		if i < len(rtmrs) {
			got = rtmrs[i]
		}
		want = append(want, struct {
			name      string
			got, want []byte
		}{fmt.Sprintf("RTMR%d", i), got, r})
	}
	for _, w := range want {
		if w.want != nil && !bytes.Equal(w.got, w.want) {
			return nil, fail(CheckTDFields, "%s is %x; the policy requires %x", w.name, w.got, w.want)
		}
	}
	d := map[string]string{
		"td_attributes":   fmt.Sprintf("%#x", attrs),
		"xfam":            hex.EncodeToString(b.GetXfam()),
		"mr_seam":         hex.EncodeToString(b.GetMrSeam()),
		"mr_config_id":    hex.EncodeToString(b.GetMrConfigId()),
		"mr_owner":        hex.EncodeToString(b.GetMrOwner()),
		"mr_owner_config": hex.EncodeToString(b.GetMrOwnerConfig()),
	}
	for i, r := range rtmrs {
		d[fmt.Sprintf("rtmr%d", i)] = hex.EncodeToString(r)
	}
	return d, nil
}
