package keepcert

import (
	"bytes"
	"strings"
	"testing"
)

// SGX and CCA claims carry their identity values and TCB status as
// details (TestDetailsCompatible: older parsers still read them).
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
}
