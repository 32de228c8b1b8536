package verify

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/castellan-dev/castellan/internal/testvectors"
	"github.com/veraison/ccatoken/platform"
)

func ccaEnvelope(tb testing.TB, c *sim.CA, o sim.CCAOptions) *evidence.Envelope {
	tb.Helper()
	env := &evidence.Envelope{Platform: evidence.PlatformCCA, Key: keyA(), Nonce: []byte("n1"), WorkloadDigest: digestA}
	var err error
	if env.Evidence, err = c.SignCCA(evidence.ReportData(env.Key, env.Nonce, env.WorkloadDigest), o); err != nil {
		tb.Fatal(err)
	}
	return env
}

func TestCCASimRoundTrip(t *testing.T) {
	c := ca(t, testCA)
	rim, err := sim.CCAMeasurement()
	if err != nil {
		t.Fatal(err)
	}
	env := ccaEnvelope(t, c, sim.CCAOptions{})
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if env, err = evidence.Parse(b); err != nil {
		t.Fatal(err)
	}
	cl, err := Envelope(env, trusting(c))
	if err != nil {
		t.Fatal(err)
	}
	if cl.Platform != evidence.PlatformCCA || !cl.Simulated || cl.Debug || !bytes.Equal(cl.Measurement, rim) ||
		!bytes.Equal(cl.Identity["rem.3"], make([]byte, 64)) || !bytes.Equal(cl.Identity["platform_sw.0"], sim.CCAPlatformSoftware[:]) {
		t.Errorf("claims %+v", cl)
	}

	// The same CPAK listed as a real platform key: not simulated.
	cl, err = Envelope(env, Options{CCAPlatformKeys: []crypto.PublicKey{c.CCAPlatformKey().PublicKey}})
	if err != nil || cl.Simulated {
		t.Errorf("listed CPAK: claims %+v, %v; want verified, not simulated", cl, err)
	}
}

func TestCCAAttacks(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	tests := []struct {
		name   string
		signer *sim.CA
		o      sim.CCAOptions
		change func(*evidence.Envelope)
		opts   Options
		check  string
		msg    string
	}{
		{name: "foreign CPAK", signer: other, opts: trusting(c), check: CheckChain, msg: "not signed by a CPAK the policy lists"},
		{name: "no CPAK in the policy", signer: c, opts: Options{}, check: CheckChain, msg: "lists no trusted CPAK"},
		{name: "another real CPAK listed", signer: c, opts: Options{CCAPlatformKeys: []crypto.PublicKey{other.CCAPlatformKey().PublicKey}}, check: CheckChain},
		{name: "tampered realm token", signer: c, change: func(env *evidence.Envelope) {
			i := bytes.LastIndex(env.Evidence, make([]byte, 64)) // a zero REM, in the realm token
			env.Evidence[i] ^= 1
		}, opts: trusting(c), check: CheckSignature, msg: "realm token"},
		{name: "tampered platform token", signer: c, change: func(env *evidence.Envelope) {
			i := bytes.Index(env.Evidence, sim.CCAPlatformSoftware[:])
			env.Evidence[i] ^= 1
		}, opts: trusting(c), check: CheckChain},
		{name: "RAK not bound to the platform", signer: c, o: sim.CCAOptions{UnboundRAK: true}, opts: trusting(c), check: CheckSignature, msg: "binding"},
		{name: "report data bound to another key", signer: c, change: func(env *evidence.Envelope) { env.Key = keyB() }, opts: trusting(c), check: CheckReportData},
		{name: "platform decommissioned", signer: c, o: sim.CCAOptions{Lifecycle: platform.LifecycleDecommissionedMin}, opts: trusting(c), check: CheckPlatform, msg: "decommissioned"},
		{name: "platform in provisioning", signer: c, o: sim.CCAOptions{Lifecycle: platform.LifecycleRotProvisioningMin}, opts: trusting(c), check: CheckPlatform, msg: "secured"},
		{name: "truncated token", signer: c, change: func(env *evidence.Envelope) { env.Evidence = env.Evidence[:len(env.Evidence)-1] }, opts: trusting(c), check: CheckFormat},
		{name: "SGX quote as CCA", signer: c, change: func(env *evidence.Envelope) { env.Evidence = sgxEnvelope(t, c, sim.SGXOptions{}).Evidence }, opts: trusting(c), check: CheckFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := ccaEnvelope(t, tc.signer, tc.o)
			if tc.change != nil {
				tc.change(env)
			}
			mustRefuse(t, env, tc.opts, tc.check, tc.msg)
		})
	}
}

// A platform being debugged verifies with Debug set; the policy refuses it.
func TestCCADebugLifecycle(t *testing.T) {
	c := ca(t, testCA)
	for _, lc := range []uint16{platform.LifecycleNonCCAPlatformDebugMin, platform.LifecycleRecoverableCCAPlatformDebugMin} {
		cl, err := Envelope(ccaEnvelope(t, c, sim.CCAOptions{Lifecycle: lc}), trusting(c))
		if err != nil || !cl.Debug {
			t.Errorf("lifecycle %#x: claims %+v, %v; want Debug", lc, cl, err)
		}
	}
}

// FuzzVerifyCCA: the token decoder never panics and nothing but the
// genuine token verifies.
func FuzzVerifyCCA(f *testing.F) {
	c := ca(f, testCA)
	env := ccaEnvelope(f, c, sim.CCAOptions{})
	f.Add(env.Evidence)
	f.Add(ccaEnvelope(f, c, sim.CCAOptions{UnboundRAK: true}).Evidence)
	f.Add([]byte{0xd9, 0x01, 0x8f, 0xa0})
	if b := testvectors.OptionalModuleFile(f, ccaModule, ccaTFRMM+"cca_token.cbor"); b != nil {
		f.Add(b)
	}
	opts := trusting(c)
	f.Fuzz(func(t *testing.T, raw []byte) {
		e := *env
		e.Evidence = raw
		_, err := Envelope(&e, opts)
		if err == nil && !bytes.Equal(raw, env.Evidence) {
			// A re-encoding of the same signed tokens would be fine;
			// anything else verifying is a bug.
			if _, perr := Report(evidence.PlatformCCA, raw, nil, opts); perr == nil && !bytes.Contains(raw, env.Evidence[8:64]) {
				t.Fatalf("accepted a token that was never signed: %x", raw)
			}
		}
		var ve *Error
		if err != nil && !errors.As(err, &ve) {
			t.Fatalf("error %v is not a *verify.Error", err)
		}
	})
}

func BenchmarkSimSignCCA(b *testing.B) {
	c := ca(b, testCA)
	rim := make([]byte, 64)
	for b.Loop() {
		if _, err := c.SignCCA([64]byte{}, sim.CCAOptions{RIM: rim}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyCCA(b *testing.B) {
	c := ca(b, testCA)
	env := ccaEnvelope(b, c, sim.CCAOptions{})
	opts := trusting(c)
	for b.Loop() {
		if _, err := Envelope(env, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// The real CCA sample: a token made by TF-RMM (Arm's reference realm
// management monitor) and the CPAK that signed its platform token, as the
// ccatoken module (a dependency) ships them, read from the module cache.
const (
	ccaModule = "github.com/veraison/ccatoken"
	ccaTFRMM  = "realm/testvectors/tf-rmm/"
)

// TestRealCCASample verifies the TF-RMM token with the CPAK it was signed
// with.
func TestRealCCASample(t *testing.T) {
	raw := testvectors.ModuleFile(t, ccaModule, ccaTFRMM+"cca_token.cbor")
	blk, _ := pem.Decode(testvectors.ModuleFile(t, ccaModule, ccaTFRMM+"cca_platform.pub"))
	if blk == nil {
		t.Fatal("cca_platform.pub: no PEM block")
	}
	cpak, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{CCAPlatformKeys: []crypto.PublicKey{cpak}}
	cl, err := Report(evidence.PlatformCCA, raw, nil, opts)
	if err != nil {
		t.Fatal(err)
	}
	if cl.Simulated || cl.Debug || len(cl.Measurement) != 32 || len(cl.Identity["platform_sw.3"]) != 32 || cl.ReportData[0] != 0xab {
		t.Errorf("claims %+v", cl)
	}
	c := ca(t, testCA)
	for name, o := range map[string]Options{
		"no CPAK listed":      {},
		"another CPAK listed": trusting(c),
	} {
		if _, err := Report(evidence.PlatformCCA, raw, nil, o); err == nil || !strings.Contains(err.Error(), "chain:") {
			t.Errorf("%s: %v, want a chain refusal", name, err)
		}
	}
	tampered := bytes.Clone(raw)
	tampered[len(tampered)-200] ^= 1 // inside the realm token
	if _, err := Report(evidence.PlatformCCA, tampered, nil, opts); err == nil {
		t.Error("tampered token accepted")
	}
}
