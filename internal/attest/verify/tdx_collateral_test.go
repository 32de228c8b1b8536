package verify

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	tdxtesting "github.com/google/go-tdx-guest/testing"
)

// intelSample is Intel's collateral for the sample quote as go-tdx-guest
// ships it (testing.TestGetter: TCB info, QE identity, PCK CRL, root CA
// CRL, with the issuer-chain headers PCS sends), as a collateral source
// that never touches the network.
func intelSample() collateral.Map {
	m := collateral.Map{}
	for url, r := range tdxtesting.TestGetter.Responses {
		m[url] = &collateral.Response{Header: r.Header, Body: r.Body}
	}
	return m
}

func sampleQuote(t *testing.T) []byte {
	raw := readTestdata(t, "tdx_spr_e4_quote.dat")
	return raw[:0x27c+binary.LittleEndian.Uint32(raw[0x278:])]
}

// TestRealTDXCollateral verifies the sample quote with Intel's sample
// collateral through go-tdx-guest's collateral code. The sample TCB info
// (Intel's, signed) lists TCB levels above the sample quote's TEE_TCB_SVN
// (go-tdx-guest's own test expects the same), so the quote is refused at
// the TCB status after every signature, CRL and date check passed; a
// collateral problem is refused earlier, as collateral. The accepting path
// is TestSimTDXCollateral's, with the simulation CA's collateral.
func TestRealTDXCollateral(t *testing.T) {
	raw := sampleQuote(t)
	at := time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC) // within the sample collateral's validity
	opts := Options{Now: at, Collateral: intelSample(), TDX: TDXPolicy{AllowSEPTVE: true}}
	refused := func(name string, o Options, check, want string) {
		t.Helper()
		_, err := Report(evidence.PlatformTDX, raw, nil, o)
		var ve *Error
		if !errors.As(err, &ve) || ve.Check != check || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want a %s refusal naming %q", name, err, check, want)
		}
	}
	refused("sample TCB below Intel's levels", opts, CheckTCBStatus, "below every level")
	// Collateral past its next update.
	late := opts
	late.Now = time.Date(2023, time.July, 20, 0, 0, 0, 0, time.UTC)
	refused("expired TCB info", late, CheckCollateral, "expired")
	for _, url := range []string{
		"https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000",
		"https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity",
		"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
		"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der",
	} {
		missing := intelSample()
		delete(missing, url)
		o := opts
		o.Collateral = missing
		refused("missing "+url, o, CheckCollateral, "")
	}
	// A TCB info whose body was changed no longer verifies.
	tampered := intelSample()
	tcbURL := "https://api.trustedservices.intel.com/tdx/certification/v4/tcb?fmspc=50806f000000"
	body := strings.Replace(string(tampered[tcbURL].Body), `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	tampered[tcbURL] = &collateral.Response{Header: tampered[tcbURL].Header, Body: []byte(body)}
	o := opts
	o.Collateral = tampered
	refused("tampered TCB info", o, CheckCollateral, "tcbInfo")
	// Issuer chain header missing.
	noHeader := intelSample()
	noHeader[tcbURL] = &collateral.Response{Body: noHeader[tcbURL].Body}
	o.Collateral = noHeader
	refused("TCB info without its issuer chain", o, CheckCollateral, "Tcb-Info-Issuer-Chain")
}
