package service

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func BenchmarkIssueSNP(b *testing.B) { benchIssue(b, evidence.PlatformSNP) }
func BenchmarkIssueTDX(b *testing.B) { benchIssue(b, evidence.PlatformTDX) }

// benchIssue measures full handling of certificate requests (JSON, CBOR,
// CSR, nonce, verification, policy, issuance, audit record in SQLite) on all
// cores, and reports certificates per second and the per-request time spent
// in evidence verification and in issuance. Building the keeps' evidence is
// not measured.
func benchIssue(b *testing.B, platform string) {
	h := newHarness(b)
	h.setPolicy(func(s string) string { return strings.Replace(s, "max_nonces = 50", "max_nonces = 10000000", 1) })
	h.svc.timing = &stageTiming{}
	key := newKey(b)
	bodies := make(chan []byte, b.N)
	for i := 0; i < b.N; i++ {
		bodies <- h.body(keepReq{platform: platform, key: key})
	}
	close(bodies)
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if w := h.do("POST", "/v1/certificate", <-bodies); w.Code != http.StatusOK {
				b.Errorf("refused: %d %s", w.Code, w.Body)
				return
			}
		}
	})
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	// On a shared machine certs/s depends on the other load; CPU time per
	// certificate does not: cores / cpu-µs/op bounds the throughput.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "certs/s")
	b.ReportMetric(float64(h.svc.timing.verify.Load())/float64(b.N)/1e3, "verify-µs/op")
	b.ReportMetric(float64(h.svc.timing.issue.Load())/float64(b.N)/1e3, "issue-µs/op")
}

// BenchmarkChallenge measures POST /v1/challenge: a sealed nonce, nothing
// stored; cpu-µs/op is what an anonymous flood costs per request.
func BenchmarkChallenge(b *testing.B) {
	h := newHarness(b)
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if w := h.do("POST", "/v1/challenge", nil); w.Code != http.StatusOK {
				b.Errorf("challenge: %d", w.Code)
				return
			}
		}
	})
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}

// BenchmarkJunkRedeem measures the cheapest request that uses up a ledger
// entry: a genuine nonce in a minimal envelope, with a CSR that does not
// parse. Its cpu-µs/op bounds how fast anyone can fill the used-nonce
// ledger (docs/attest.md: sizing max_nonces).
func BenchmarkJunkRedeem(b *testing.B) {
	h := newHarness(b)
	h.setPolicy(func(s string) string { return strings.Replace(s, "max_nonces = 50", "max_nonces = 100000000", 1) })
	bodies := make(chan []byte, b.N)
	for i := 0; i < b.N; i++ {
		env := &evidence.Envelope{Platform: evidence.PlatformNone, Key: []byte{1}, Nonce: h.challenge(), WorkloadDigest: goodDigest}
		evb, err := env.Marshal()
		if err != nil {
			b.Fatal(err)
		}
		body, _ := json.Marshal(CertificateRequest{CSR: []byte{0x30, 0}, Evidence: evb})
		bodies <- body
	}
	close(bodies)
	b.ResetTimer()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if w := h.do("POST", "/v1/certificate", <-bodies); w.Code != http.StatusBadRequest {
				b.Errorf("junk redeem: %d %s", w.Code, w.Body)
				return
			}
		}
	})
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}
