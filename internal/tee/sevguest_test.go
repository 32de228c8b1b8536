//go:build !windows

package tee

// go-sev-guest's fake device does not build on Windows.

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	sevclient "github.com/google/go-sev-guest/client"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify/trust"
)

// TestSevGuestDevice goes through /dev/sev-guest's ioctl interface, faked by
// go-sev-guest: extended report, certificate table, and verification of the
// result against the fake's own AMD-format roots.
func TestSevGuestDevice(t *testing.T) {
	signer, err := sevtest.DefaultTestOnlyCertChain("Milan-B1", time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := signer.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	key := spki(t)
	rd := evidence.ReportData(key, []byte("n"), digest)
	resp := &sevtest.GetReportResponse{}
	raw := sevtest.TestRawReport(rd)
	copy(resp.Resp.Data[:], raw[:])
	dev := &sevtest.Device{
		ReportDataRsp: map[string]any{hexs(rd[:]): resp},
		Certs:         certs,
		Signer:        signer,
	}
	var opened string
	b := NewSNP(filepath.Join(t.TempDir(), "none"), "/dev/fake-sev")
	b.OpenDevice = func(path string) (sevclient.Device, error) {
		opened = path
		return dev, dev.Open(path)
	}
	env, err := Attest(context.Background(), b, key, []byte("n"), digest)
	if err != nil {
		t.Fatal(err)
	}
	if opened != "/dev/fake-sev" {
		t.Errorf("opened %q, want the configured device path", opened)
	}
	if len(env.Endorsements) != 3 || !bytes.Equal(env.Endorsements[0], signer.Vcek.Raw) {
		t.Fatalf("endorsements are not the device's VCEK, ASK, ARK")
	}
	roots := map[string][]*trust.AMDRootCerts{"Milan": {{ProductLine: "Milan", ProductCerts: &trust.ProductCerts{Ark: signer.Ark, Ask: signer.Ask}}}}
	cl, err := verify.Envelope(env, verify.Options{AMDRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	// go-sev-guest's fake reports set the DEBUG policy bit.
	if cl.Simulated || !cl.Debug {
		t.Errorf("claims %+v", cl)
	}
	// With the real AMD roots, the fake's chain is refused.
	if _, err := verify.Envelope(env, verify.Options{}); err == nil {
		t.Error("the fake device's report verified against AMD's roots")
	}
	// A firmware error comes back as an error.
	dev.ReportDataRsp[hexs(rd[:])] = &sevtest.GetReportResponse{FwErr: 0x16}
	if _, err := Attest(context.Background(), b, key, []byte("n"), digest); err == nil {
		t.Error("a firmware error was ignored")
	}
}
