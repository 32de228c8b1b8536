package service

import (
	"bytes"
	"encoding/hex"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/veraison/ccatoken/platform"
)

var (
	sgxMeasurement = bytes.Repeat([]byte{0x11}, 32)
	ccaMeasurement = bytes.Repeat([]byte{0x11}, 64)
)

// sgxCCAHarness is the harness with platforms sgx and cca enabled: the
// simulation root trusted for both (its CPAK certificate for CCA), the
// simulation's Intel collateral for SGX in the collateral folder beside
// the roots file (as a stored simulation CA keeps it), minimums on the
// enclave's ISVSVN and the CCA platform's firmware.
func sgxCCAHarness(t *testing.T) *harness {
	return sgxCCAHarnessWith(t, sim.SGXCollateralOptions{})
}

func sgxCCAHarnessWith(t *testing.T, o sim.SGXCollateralOptions) *harness {
	h := newHarness(t)
	m, err := h.sim.SignSGXCollateral(o)
	if err != nil {
		t.Fatal(err)
	}
	for u, r := range m {
		if err := collateral.Put(filepath.Join(h.dir, sim.CollateralDir), u, r); err != nil {
			t.Fatal(err)
		}
	}
	h.writePolicy(goodDigest, `
[platforms.sgx]
sim_roots = ["`+h.rootsFile+`"]
[platforms.sgx.min_tcb]
isv_svn = 2

[platforms.cca]
sim_roots = ["`+h.rootsFile+`"]
platform_software = ["`+hex.EncodeToString(sim.CCAPlatformSoftware[:])+`"]
`)
	h.write(h.measFile, measurementsTOML(false)+`
[[measurement]]
platform = "sgx"
value = "`+hex.EncodeToString(sgxMeasurement)+`"
[[measurement]]
platform = "sgx"
value = "`+hex.EncodeToString(bytes.Repeat([]byte{0x22}, 32))+`"
revoked = true
[[measurement]]
platform = "cca"
value = "`+hex.EncodeToString(ccaMeasurement)+`"
[[measurement]]
platform = "cca"
value = "`+hex.EncodeToString(bytes.Repeat([]byte{0x22}, 64))+`"
revoked = true
`)
	if _, err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}
	return h
}

func goodSGX(mod func(*sim.SGXOptions)) sim.SGXOptions {
	o := sim.SGXOptions{MREnclave: sgxMeasurement, ISVSVN: 2}
	if mod != nil {
		mod(&o)
	}
	return o
}

func goodCCA(mod func(*sim.CCAOptions)) sim.CCAOptions {
	o := sim.CCAOptions{RIM: ccaMeasurement}
	if mod != nil {
		mod(&o)
	}
	return o
}

func TestIssueSGXAndCCA(t *testing.T) {
	h := sgxCCAHarness(t)
	c := h.mustIssue(keepReq{platform: evidence.PlatformSGX, sgx: goodSGX(nil)})
	if c.Platform != evidence.PlatformSGX || !c.Simulated || !bytes.Equal(c.Measurement, sgxMeasurement) ||
		c.Details["mrsigner"] != hex.EncodeToString(sim.SGXSigner[:]) || c.Details["tcb_status"] != "UpToDate" || c.TCB["isv_svn"] != 2 {
		t.Errorf("sgx claims %+v", c)
	}
	c = h.mustIssue(keepReq{platform: evidence.PlatformCCA, cca: goodCCA(nil)})
	if c.Platform != evidence.PlatformCCA || !c.Simulated || !bytes.Equal(c.Measurement, ccaMeasurement) ||
		c.Details["rem.0"] != strings.Repeat("00", 64) || c.Details["tcb_status"] != "" || c.Details["lifecycle"] == "" {
		t.Errorf("cca claims %+v", c)
	}
}

// Intel's TCB status of the simulated SGX platform, from the collateral
// beside the simulation root, is decided by tcb_statuses.
func TestSGXTCBStatus(t *testing.T) {
	h := sgxCCAHarnessWith(t, sim.SGXCollateralOptions{Status: "OutOfDate"})
	h.mustRefuse(h.body(keepReq{platform: evidence.PlatformSGX, sgx: goodSGX(nil)}), "tcb_status")
}

// TestRefusalsSGXAndCCA: the refusals the SNP and TDX requests have, for
// SGX and CCA requests, each with its check.
func TestRefusalsSGXAndCCA(t *testing.T) {
	h := sgxCCAHarness(t)
	sgx := func(o sim.SGXOptions) keepReq { return keepReq{platform: evidence.PlatformSGX, sgx: o} }
	cca := func(o sim.CCAOptions) keepReq { return keepReq{platform: evidence.PlatformCCA, cca: o} }
	tests := []struct {
		name  string
		req   func() keepReq
		check string
	}{
		{"sgx tampered MRENCLAVE", func() keepReq {
			r := sgx(goodSGX(nil))
			r.tamper = func(q []byte) { q[48+64] ^= 1 }
			return r
		}, CheckSignature},
		{"sgx foreign root", func() keepReq { r := sgx(goodSGX(nil)); r.signer = h.other; return r }, CheckChain},
		{"sgx report data bound to another key", func() keepReq { r := sgx(goodSGX(nil)); r.bindKey = newKey(t); return r }, CheckReportData},
		{"sgx debug enclave", func() keepReq { return sgx(goodSGX(func(o *sim.SGXOptions) { o.Debug = true })) }, "debug"},
		{"sgx MRENCLAVE unknown", func() keepReq {
			return sgx(goodSGX(func(o *sim.SGXOptions) { o.MREnclave = bytes.Repeat([]byte{0x33}, 32) }))
		}, "measurement"},
		{"sgx MRENCLAVE revoked", func() keepReq {
			return sgx(goodSGX(func(o *sim.SGXOptions) { o.MREnclave = bytes.Repeat([]byte{0x22}, 32) }))
		}, "revoked"},
		{"sgx enclave out of date", func() keepReq { return sgx(goodSGX(func(o *sim.SGXOptions) { o.ISVSVN = 1 })) }, "tcb"},
		{"cca tampered token", func() keepReq {
			r := cca(goodCCA(nil))
			r.tamper = func(tok []byte) { tok[bytes.Index(tok, ccaMeasurement)] ^= 1 }
			return r
		}, CheckSignature},
		{"cca foreign CPAK", func() keepReq { r := cca(goodCCA(nil)); r.signer = h.other; return r }, CheckChain},
		{"cca RAK not bound", func() keepReq { return cca(goodCCA(func(o *sim.CCAOptions) { o.UnboundRAK = true })) }, CheckSignature},
		{"cca report data bound to another key", func() keepReq { r := cca(goodCCA(nil)); r.bindKey = newKey(t); return r }, CheckReportData},
		{"cca platform being debugged", func() keepReq {
			return cca(goodCCA(func(o *sim.CCAOptions) { o.Lifecycle = platform.LifecycleNonCCAPlatformDebugMin }))
		}, "debug"},
		{"cca RIM unknown", func() keepReq {
			return cca(goodCCA(func(o *sim.CCAOptions) { o.RIM = bytes.Repeat([]byte{0x33}, 64) }))
		}, "measurement"},
		{"cca RIM revoked", func() keepReq {
			return cca(goodCCA(func(o *sim.CCAOptions) { o.RIM = bytes.Repeat([]byte{0x22}, 64) }))
		}, "revoked"},
		{"cca platform firmware out of date", func() keepReq {
			return cca(goodCCA(func(o *sim.CCAOptions) { o.PlatformSoftware = bytes.Repeat([]byte{0x44}, 32) }))
		}, "tcb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			h.mustRefuse(h.body(tt.req()), tt.check)
		})
	}
}
