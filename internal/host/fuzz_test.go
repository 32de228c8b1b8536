package host

import (
	"strings"
	"testing"
)

// FuzzParseCreateRequest: the create request is the agent's main input
// from the network.
func FuzzParseCreateRequest(f *testing.F) {
	f.Add([]byte(`{"backend":"nil","nonce":"bm9uY2U=","digest":"sha256:` + strings.Repeat("0", 64) + `","client_key":"` + strings.Repeat("A", 43) + `=","limits":{"cpu_seconds":5}}`))
	f.Add([]byte(`{"backend":"sim-snp","nonce":"","digest":"sha256:00","client_key":""}`))
	f.Add([]byte(`{"backend":"nil","extra":1}`))
	f.Add([]byte(`{"backend":"sim-snp","nonce":"bm9uY2U=","digest":"sha256:` + strings.Repeat("0", 64) + `","client_key":"` + strings.Repeat("A", 43) + `=","limits":{"vm_memory_bytes":1073741824,"vcpus":2}}`))
	f.Add([]byte(`{"backend":"nil","nonce":"bm9uY2U=","digest":"sha256:` + strings.Repeat("0", 64) + `","client_key":"` + strings.Repeat("A", 43) + `=","limits":{"cpu_quota_us":50000,"cpu_period_us":100000}}`))
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseCreateRequest(b)
		if err != nil {
			return
		}
		if req.Backend == "" || len(req.Nonce) == 0 || len(req.ClientKey) != 32 || len(req.Name) > 64 {
			t.Fatalf("accepted a bad request: %+v", req)
		}
		max := Limits{MemoryBytes: 1 << 30, CPUSeconds: 10, WallSeconds: 10, OpenFiles: 64, VMMemoryBytes: 2 << 30, VCPUs: 4}
		if lim, err := checkLimits(req.Limits, max); err == nil {
			if req.Limits.MemoryBytes > 1<<30 || req.Limits.CPUSeconds > 10 || req.Limits.OpenFiles > 64 || req.Limits.WallSeconds > 10 ||
				req.Limits.VMMemoryBytes > 2<<30 || req.Limits.VCPUs > 4 {
				t.Fatalf("limits above the maxima accepted: %+v", req.Limits)
			}
			if lim.VMMemoryBytes < 128<<20 || lim.VMMemoryBytes%(1<<20) != 0 || lim.VCPUs < 1 {
				t.Fatalf("a VM size QEMU cannot take accepted: %+v", lim)
			}
			if q, p := lim.CPUQuotaMicros, lim.CPUPeriodMicros; (q == 0) != (p == 0) || q != 0 && (q < 1000 || p < 1000 || p > 1000000) {
				t.Fatalf("a CPU rate cpu.max refuses accepted: %+v", lim)
			}
		}
	})
}
