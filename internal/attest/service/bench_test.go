package service

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

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
