package keepcert

import (
	"bytes"
	"encoding/asn1"
	"strings"
	"testing"
)

// SGX and CCA claims carry their identity values and TCB status as
// details; claims without details encode exactly as before they existed.
func TestSGXDetailsRoundTrip(t *testing.T) {
	c := &Claims{Attested: true, Platform: PlatformSGX, Measurement: bytes.Repeat([]byte{1}, 32), WorkloadDigest: digest,
		TCB: map[string]uint64{"isv_svn": 2}, Details: map[string]string{"mrsigner": strings.Repeat("02", 32), "config_id": "03", "tcb_status": "UpToDate"}}
	der, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseClaims(der)
	if err != nil {
		t.Fatal(err)
	}
	if got.Details["tcb_status"] != "UpToDate" || len(got.Details) != 3 || got.Details["mrsigner"] != c.Details["mrsigner"] {
		t.Errorf("parsed %+v", got)
	}

	old := &Claims{Attested: true, Platform: PlatformSNP, WorkloadDigest: digest}
	der, err = old.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The layout before details.
	type v1 struct {
		Version        int
		Attested       bool
		Platform       string `asn1:"utf8"`
		Simulated      bool
		Insecure       bool
		Debug          bool
		TCB            []tcbComponent
		Measurement    []byte
		WorkloadDigest string `asn1:"utf8"`
		Package        string `asn1:"utf8"`
	}
	want, err := asn1.Marshal(v1{Version: 1, Attested: true, Platform: PlatformSNP, Insecure: false, TCB: []tcbComponent{}, Measurement: []byte{}, WorkloadDigest: digest})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(der, want) {
		t.Errorf("claims without details encode as %x, before as %x", der, want)
	}
	// A relying party built before the fields existed reads new claims.
	newDER, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var old1 v1
	if rest, err := asn1.Unmarshal(newDER, &old1); err != nil || len(rest) != 0 || old1.Platform != PlatformSGX {
		t.Errorf("old layout reading new claims: %+v, %v", old1, err)
	}
}
