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
	f.Add([]byte(`{} {}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := ParseCreateRequest(b)
		if err != nil {
			return
		}
		if req.Backend == "" || len(req.Nonce) == 0 || len(req.ClientKey) != 32 || len(req.Name) > 64 {
			t.Fatalf("accepted a bad request: %+v", req)
		}
		if _, err := checkLimits(req.Limits, Limits{MemoryBytes: 1 << 30, CPUSeconds: 10, WallSeconds: 10, OpenFiles: 64}); err == nil {
			if req.Limits.MemoryBytes > 1<<30 || req.Limits.CPUSeconds > 10 || req.Limits.OpenFiles > 64 || req.Limits.WallSeconds > 10 {
				t.Fatalf("limits above the maxima accepted: %+v", req.Limits)
			}
		}
	})
}
