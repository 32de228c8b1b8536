package keepcert

import (
	"bytes"
	"encoding/asn1"
	"testing"
)

// SGX and CCA claims carry identity values and a TCB status; SNP and TDX
// claims without them encode exactly as before the fields existed.
func TestIdentityRoundTrip(t *testing.T) {
	c := &Claims{Attested: true, Platform: PlatformSGX, Measurement: bytes.Repeat([]byte{1}, 32), WorkloadDigest: digest,
		TCB: map[string]uint64{"isv_svn": 2}, Identity: map[string][]byte{"mrsigner": bytes.Repeat([]byte{2}, 32), "config_id": {3}}, TCBStatus: "UpToDate"}
	der, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseClaims(der)
	if err != nil {
		t.Fatal(err)
	}
	if got.TCBStatus != "UpToDate" || len(got.Identity) != 2 || !bytes.Equal(got.Identity["mrsigner"], c.Identity["mrsigner"]) {
		t.Errorf("parsed %+v", got)
	}

	old := &Claims{Attested: true, Platform: PlatformSNP, WorkloadDigest: digest}
	der, err = old.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// The layout before identity and tcbStatus.
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
		t.Errorf("claims without identity encode as %x, before as %x", der, want)
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
