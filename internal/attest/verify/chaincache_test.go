package verify

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/tee/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify/trust"
)

// cachedOpts trusts c's simulation root and uses a cache of its own, so
// that tests can tell hits from misses.
func cachedOpts(c *sim.CA, size int) Options {
	return Options{SimRoots: c.Roots(), ChainCache: NewChainCache(size)}
}

// wantCheck fails the test unless err is a verification error of check.
func wantCheck(t *testing.T, err error, check, msg string) {
	t.Helper()
	var ve *Error
	if !errors.As(err, &ve) || ve.Check != check || !strings.Contains(err.Error(), msg) {
		t.Fatalf("got %v, want a %s error containing %q", err, check, msg)
	}
}

// resign signs an SEV-SNP report again with a fresh P-384 key: the report
// an attacker who does not hold the VCEK's key would produce.
func resign(t *testing.T, report []byte) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), report...)
	h := sha512.Sum384(abi.SignedComponent(out))
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(r, s, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestChainCacheHit(t *testing.T) {
	c := ca(t, testCA)
	opts := cachedOpts(c, 8)
	for i := 0; i < 3; i++ {
		cl, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, simOpts{}), opts)
		if err != nil {
			t.Fatal(err)
		}
		if !cl.Simulated || cl.TCB["snp"] != uint64(sim.DefaultSNPTCB.SNP) {
			t.Errorf("claims from a cached chain: simulated %v, TCB %v", cl.Simulated, cl.TCB)
		}
	}
	if n, h := opts.ChainCache.Len(), opts.ChainCache.Hits(); n != 1 || h != 2 {
		t.Errorf("three reports of one chip and TCB: %d cached chains and %d hits, want 1 and 2", n, h)
	}
}

// TestChainCacheAttacks sends, after the chain is cached, reports that the
// cached chain must not let through: the chain is reused, the checks that
// tie it to the report are not skipped.
func TestChainCacheAttacks(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	tests := []struct {
		name       string
		env        func(t *testing.T) *evidence.Envelope
		check, msg string
	}{
		{"report signed by another key", func(t *testing.T) *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Evidence = resign(t, env.Evidence)
			return env
		}, CheckSignature, "signature"},
		{"tampered measurement", func(t *testing.T) *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Evidence[measurementOffset[evidence.PlatformSNP]] ^= 1
			return env
		}, CheckSignature, "signature"},
		{"report of a lower TCB under the cached chain", func(t *testing.T) *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			low := simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{TCB: &sim.SNPTCB{Bootloader: 1, SNP: 1, Microcode: 1}}})
			env.Evidence = low.Evidence
			return env
		}, CheckChain, "is for TCB"},
		{"report of another chip under the cached chain", func(t *testing.T) *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Evidence = simEnvelope(t, other, evidence.PlatformSNP, simOpts{}).Evidence
			return env
		}, CheckChain, "another chip"},
		{"report data for another key", func(t *testing.T) *evidence.Envelope {
			env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
			env.Key = keyB()
			return env
		}, CheckReportData, "does not bind"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := cachedOpts(c, 8)
			if _, err := Envelope(simEnvelope(t, c, evidence.PlatformSNP, simOpts{}), opts); err != nil {
				t.Fatal(err)
			}
			_, err := Envelope(tc.env(t), opts)
			wantCheck(t, err, tc.check, tc.msg)
			if opts.ChainCache.Hits() != 1 {
				t.Errorf("the attack did not go through the cached chain (%d hits): the test proves nothing", opts.ChainCache.Hits())
			}
		})
	}
}

// TestChainCacheRoots: a chain verified under simulation roots is not a
// hit for a caller that does not trust them.
func TestChainCacheRoots(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	cache := NewChainCache(8)
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
	if _, err := Envelope(env, Options{SimRoots: c.Roots(), ChainCache: cache}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts Options
		msg  string
	}{
		{"no simulation roots", Options{ChainCache: cache}, "does not list"},
		{"another simulation root", Options{SimRoots: other.Roots(), ChainCache: cache}, "does not list"},
		{"AMD roots only, given explicitly", Options{AMDRoots: map[string][]*trust.AMDRootCerts{}, ChainCache: cache}, "no trusted AMD root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Envelope(env, tc.opts)
			wantCheck(t, err, CheckChain, tc.msg)
		})
	}
	if h := cache.Hits(); h != 0 {
		t.Errorf("%d hits for callers that do not trust the chain's root", h)
	}
	// The trusting caller still hits.
	if _, err := Envelope(env, Options{SimRoots: c.Roots(), ChainCache: cache}); err != nil || cache.Hits() != 1 {
		t.Errorf("trusting caller: err %v, %d hits, want a hit", err, cache.Hits())
	}
}

// TestChainCacheExpiry: a cached chain is used only within its
// certificates' validity; outside, it is verified again and refused.
func TestChainCacheExpiry(t *testing.T) {
	c := ca(t, testCA)
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
	now := time.Now()
	for _, tc := range []struct {
		name string
		at   time.Time
	}{
		{"after the certificates expire", now.AddDate(30, 0, 0)},
		{"before they are valid", now.AddDate(0, 0, -3)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := cachedOpts(c, 8)
			opts.Now = now
			if _, err := Envelope(env, opts); err != nil {
				t.Fatal(err)
			}
			opts.Now = tc.at
			_, err := Envelope(env, opts)
			wantCheck(t, err, CheckChain, "")
			if h, n := opts.ChainCache.Hits(), opts.ChainCache.Len(); h != 0 || n != 0 {
				t.Errorf("%d hits, %d chains left; want the expired chain dropped and not used", h, n)
			}
		})
	}
}

func TestChainCacheBounded(t *testing.T) {
	c := ca(t, testCA)
	opts := cachedOpts(c, 2)
	tcbs := []sim.SNPTCB{{Bootloader: 4, SNP: 22, Microcode: 213}, {Bootloader: 4, SNP: 21, Microcode: 213}, {Bootloader: 4, SNP: 20, Microcode: 213}}
	envs := make([]*evidence.Envelope, len(tcbs))
	for i := range tcbs {
		envs[i] = simEnvelope(t, c, evidence.PlatformSNP, simOpts{snp: sim.SNPOptions{TCB: &tcbs[i]}})
		if _, err := Envelope(envs[i], opts); err != nil {
			t.Fatal(err)
		}
	}
	if n := opts.ChainCache.Len(); n != 2 {
		t.Fatalf("cache of 2 holds %d chains", n)
	}
	// The most recent two hit; the first was evicted.
	for _, i := range []int{2, 1, 0} {
		if _, err := Envelope(envs[i], opts); err != nil {
			t.Fatal(err)
		}
	}
	if h := opts.ChainCache.Hits(); h != 2 {
		t.Errorf("%d hits, want 2 (the least recently used chain evicted)", h)
	}
	off := cachedOpts(c, 0)
	for i := 0; i < 2; i++ {
		if _, err := Envelope(envs[0], off); err != nil {
			t.Fatal(err)
		}
	}
	if n, h := off.ChainCache.Len(), off.ChainCache.Hits(); n != 0 || h != 0 {
		t.Errorf("cache of size 0 holds %d chains, %d hits", n, h)
	}
}

// TestChainKey: every input of a chain verification changes the key.
func TestChainKey(t *testing.T) {
	c, other := ca(t, testCA), ca(t, otherCA)
	env := simEnvelope(t, c, evidence.PlatformSNP, simOpts{})
	base := Options{SimRoots: c.Roots()}
	k := snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &base)
	if k != snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &Options{SimRoots: c.Roots()}) {
		t.Fatal("the same inputs give different keys")
	}
	joined := [][]byte{append(append([]byte(nil), env.Endorsements[0]...), env.Endorsements[1]...), env.Endorsements[2]}
	for name, other := range map[string]chainKey{
		"other signer":        snpChainKey(env.Endorsements, abi.VlekReportSigner, "Milan", &base),
		"other product line":  snpChainKey(env.Endorsements, abi.VcekReportSigner, "Genoa", &base),
		"fewer endorsements":  snpChainKey(env.Endorsements[:2], abi.VcekReportSigner, "Milan", &base),
		"endorsements joined": snpChainKey(joined, abi.VcekReportSigner, "Milan", &base),
		"no sim roots":        snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &Options{}),
		"other sim roots":     snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &Options{SimRoots: other.Roots()}),
		"more sim roots":      snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &Options{SimRoots: append(c.Roots(), other.Roots()...)}),
		"AMD roots given":     snpChainKey(env.Endorsements, abi.VcekReportSigner, "Milan", &Options{SimRoots: c.Roots(), AMDRoots: map[string][]*trust.AMDRootCerts{}}),
	} {
		if other == k {
			t.Errorf("%s: same key", name)
		}
	}
}

// BenchmarkVerifySNPUncached is BenchmarkVerifySNP with the chain cache
// off: every report pays for the RSA-PSS chain.
func BenchmarkVerifySNPUncached(b *testing.B) {
	c := ca(b, testCA)
	env := simEnvelope(b, c, evidence.PlatformSNP, simOpts{})
	opts := Options{SimRoots: c.Roots(), ChainCache: NewChainCache(0)}
	for b.Loop() {
		if _, err := Envelope(env, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// TestChainCacheRealSample: AMD's real Milan chain (RSA-4096 ARK and ASK)
// is cached like a simulated one, and a hit gives the same claims.
func TestChainCacheRealSample(t *testing.T) {
	raw := readTestdata(t, "snp_milan_attestation.bin")
	vcek := readTestdata(t, "snp_milan_vcek.der")
	opts := Options{ChainCache: NewChainCache(4)}
	first, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, opts)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, opts)
	if err != nil || opts.ChainCache.Hits() != 1 {
		t.Fatalf("second verification: %v, %d hits", err, opts.ChainCache.Hits())
	}
	if again.Simulated || again.ReportData != first.ReportData || again.TCB["snp"] != first.TCB["snp"] || again.TCB["microcode"] != first.TCB["microcode"] {
		t.Errorf("claims from the cached chain %+v differ from %+v", again, first)
	}
	bad := append([]byte(nil), raw...)
	bad[0x90] ^= 1
	_, err = Report(evidence.PlatformSNP, bad, [][]byte{vcek}, opts)
	wantCheck(t, err, CheckSignature, "")
}

func benchmarkRealMilan(b *testing.B, cache *ChainCache) {
	raw := readTestdata(b, "snp_milan_attestation.bin")
	vcek := readTestdata(b, "snp_milan_vcek.der")
	opts := Options{ChainCache: cache}
	for b.Loop() {
		if _, err := Report(evidence.PlatformSNP, raw, [][]byte{vcek}, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifySNPReal verifies AMD's real Milan sample (VCEK → ASK →
// ARK, RSA-4096) with the chain cache and without.
func BenchmarkVerifySNPReal(b *testing.B)         { benchmarkRealMilan(b, NewChainCache(4)) }
func BenchmarkVerifySNPRealUncached(b *testing.B) { benchmarkRealMilan(b, NewChainCache(0)) }
