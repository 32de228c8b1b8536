package host

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
)

func TestCreateRefused(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.Max = Limits{MemoryBytes: 1 << 30, CPUSeconds: 60, WallSeconds: 60, OpenFiles: 100} })
	sess, _ := delivery.NewSession()
	good := func() *CreateRequest {
		return &CreateRequest{Backend: "nil", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: sess.KeyHash}
	}
	for _, tc := range []struct {
		name   string
		mod    func(*CreateRequest)
		status int
		msg    string
	}{
		{"unknown backend", func(r *CreateRequest) { r.Backend = "sgx2" }, 400, `unknown backend "sgx2"`},
		{"memory over max", func(r *CreateRequest) { r.Limits.MemoryBytes = 2 << 30 }, 400, "memory_bytes of 2147483648 bytes is over the host's maximum of 1073741824 bytes"},
		{"cpu over max", func(r *CreateRequest) { r.Limits.CPUSeconds = 61 }, 400, "cpu_seconds of 61s is over the host's maximum of 60s"},
		{"wall over max", func(r *CreateRequest) { r.Limits.WallSeconds = 3600 }, 400, "wall_seconds of 3600s is over the host's maximum of 60s"},
		{"files over max", func(r *CreateRequest) { r.Limits.OpenFiles = 101 }, 400, "open_files of 101 is over the host's maximum of 100"},
		{"negative", func(r *CreateRequest) { r.Limits.CPUSeconds = -1 }, 400, "cpu_seconds is negative"},
		{"vm memory over max", func(r *CreateRequest) { r.Limits.VMMemoryBytes = 16 << 30 }, 400, "vm_memory_bytes of 17179869184 bytes is over the host's maximum of 8589934592 bytes"},
		{"vm memory too little", func(r *CreateRequest) { r.Limits.VMMemoryBytes = 64 << 20 }, 400, "vm_memory_bytes of 67108864 bytes is too little for a VM keep (at least 134217728 bytes)"},
		{"vm memory not MiB", func(r *CreateRequest) { r.Limits.VMMemoryBytes = 256<<20 + 1 }, 400, "not a whole number of MiB"},
		{"vcpus over max", func(r *CreateRequest) { r.Limits.VCPUs = 9 }, 400, "vcpus of 9 is over the host's maximum of 8"},
		{"cpu quota alone", func(r *CreateRequest) { r.Limits.CPUQuotaMicros = 50000 }, 400, "limits: cpu_quota_us and cpu_period_us go together (got 50000 and 0)"},
		{"cpu period alone", func(r *CreateRequest) { r.Limits.CPUPeriodMicros = 100000 }, 400, "limits: cpu_quota_us and cpu_period_us go together (got 0 and 100000)"},
		{"cpu quota negative", func(r *CreateRequest) { r.Limits.CPUQuotaMicros, r.Limits.CPUPeriodMicros = -1, 100000 }, 400, "limits: cpu_quota_us and cpu_period_us must not be negative (got -1 and 100000)"},
		{"cpu period too short", func(r *CreateRequest) { r.Limits.CPUQuotaMicros, r.Limits.CPUPeriodMicros = 50000, 999 }, 400, "limits: cpu_period_us of 999 is not between 1000 and 1000000"},
		{"cpu period too long", func(r *CreateRequest) { r.Limits.CPUQuotaMicros, r.Limits.CPUPeriodMicros = 50000, 1000001 }, 400, "limits: cpu_period_us of 1000001 is not between 1000 and 1000000"},
		{"cpu quota too small", func(r *CreateRequest) { r.Limits.CPUQuotaMicros, r.Limits.CPUPeriodMicros = 999, 100000 }, 400, "limits: cpu_quota_us of 999 is less than 1000"},
		{"vcpus negative", func(r *CreateRequest) { r.Limits.VCPUs = -1 }, 400, "vcpus is negative"},
		{"bad digest", func(r *CreateRequest) { r.Digest = "sha256:xyz" }, 400, "workload digest"},
		{"no nonce", func(r *CreateRequest) { r.Nonce = nil }, 400, "nonce of 0 bytes"},
		{"bad client key", func(r *CreateRequest) { r.ClientKey = []byte("short") }, 400, "client_key of 5 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := good()
			tc.mod(r)
			_, err := h.client.Create(context.Background(), r)
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != tc.status || !strings.Contains(ae.Message, tc.msg) {
				t.Errorf("got %v, want HTTP %d with %q", err, tc.status, tc.msg)
			}
		})
	}
	ks, err := h.client.List(context.Background())
	if err != nil || len(ks) != 0 {
		t.Errorf("refused requests created keeps: %v %v", ks, err)
	}
}

func TestBadToken(t *testing.T) {
	h := newHarness(t)
	sess, _ := delivery.NewSession()
	for _, tok := range []string{"", "cstl_wrong", h.token + "x", "Basic " + h.token} {
		c, err := NewClient(h.url, tok, h.roots)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Create(context.Background(), &CreateRequest{Backend: "nil", Nonce: []byte("n"), Digest: "sha256:" + strings.Repeat("0", 64), ClientKey: sess.KeyHash})
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
			t.Errorf("token %q: got %v, want 401", tok, err)
		}
		if _, err := c.Attach(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("token %q: attach got %v, want 401", tok, err)
		}
	}
	ks, err := h.client.List(context.Background())
	if err != nil || len(ks) != 0 {
		t.Errorf("unauthorised requests created keeps: %v %v", ks, err)
	}
	entries, _ := readDirNames(h.stateDir + "/keeps")
	if len(entries) != 0 {
		t.Errorf("unauthorised requests made keep folders: %v", entries)
	}
}

func readDirNames(dir string) ([]string, error) {
	f, err := http.Dir(dir).Open("/")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fis, err := f.Readdir(-1)
	var names []string
	for _, fi := range fis {
		names = append(names, fi.Name())
	}
	return names, err
}

func TestCapacityAndSecondAttach(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxKeeps = 1 })
	k := h.create(t, "nil", Limits{})
	sess, _ := delivery.NewSession()
	_, err := h.client.Create(context.Background(), &CreateRequest{Backend: "nil", Nonce: []byte("n"), Digest: k.Digest, ClientKey: sess.KeyHash})
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests {
		t.Errorf("create beyond --max-keeps: %v, want 429", err)
	}
	c1, err := h.client.Attach(context.Background(), k.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if _, err := h.client.Attach(context.Background(), k.ID); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("second attach: %v, want 409", err)
	}
}

// cutConn hangs up after n bytes were written.
type cutConn struct {
	net.Conn
	left int
}

func (c *cutConn) Write(p []byte) (int, error) {
	if len(p) >= c.left {
		c.Conn.Write(p[:c.left])
		c.Conn.Close()
		return 0, errors.New("cut")
	}
	c.left -= len(p)
	return c.Conn.Write(p)
}

// TestClientDisconnectsMidDelivery hangs up while the module is on its
// way: the keep ends, failed, and its process is gone.
func TestClientDisconnectsMidDelivery(t *testing.T) {
	h := newHarness(t)
	art := artifact(t, fixtures.Go(t, "hello"), nil)
	sess, _ := delivery.NewSession()
	v := &delivery.InsecureVerifier{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nonce := []byte("mid-delivery")
	k, err := h.client.Create(ctx, &CreateRequest{Backend: "nil", Nonce: nonce, Digest: art.Digest.String(), ClientKey: sess.KeyHash})
	if err != nil {
		t.Fatal(err)
	}
	hello, _, _ := delivery.ParseHello(k.Hello)
	ver, err := v.Verify(ctx, hello, nonce, art.Digest.String())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := h.client.Attach(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = sess.Deliver(ctx, &cutConn{Conn: conn, left: len(art.Wasm) / 2}, ver, delivery.Delivery{Artifact: art})
	if err == nil {
		t.Fatal("delivery over a cut connection succeeded")
	}
	end := h.waitEnded(k.ID)
	if end.State != StateFailed || !strings.Contains(end.Reason, "reading the module") {
		t.Errorf("keep after the client hung up: %s (%s)", end.State, end.Reason)
	}
	if keep.Alive(k.PID, mustTicks(t, k.PID)) {
		t.Errorf("keep process %d still alive", k.PID)
	}
}

// lyingAgent puts a proxy in front of the agent that rewrites the keep's
// hello in create answers.
func lyingAgent(t *testing.T, h *harness, tamper func(*delivery.Hello)) *Client {
	t.Helper()
	real := h.agent.Handler()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/keeps" {
			real.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		real.ServeHTTP(rec, r)
		var k Keep
		if json.Unmarshal(rec.Body.Bytes(), &k) == nil && len(k.Hello) > 0 {
			var hl delivery.Hello
			json.Unmarshal(k.Hello, &hl)
			tamper(&hl)
			k.Hello, _ = json.Marshal(hl)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(rec.Code)
		json.NewEncoder(w).Encode(k)
	}))
	ts.StartTLS()
	t.Cleanup(ts.Close)
	pool := ts.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	c, err := NewClient(ts.URL, h.token, pool)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func rewriteEnvelope(t *testing.T, f func(*evidence.Envelope)) func(*delivery.Hello) {
	return func(hl *delivery.Hello) {
		env, err := evidence.Parse(hl.Evidence)
		if err != nil {
			t.Error(err)
			return
		}
		f(env)
		b, err := env.Marshal()
		if err != nil {
			t.Error(err)
			return
		}
		hl.Evidence = b
	}
}

// TestLyingAgent: the agent tampers with the keep's evidence; the client
// refuses, says why, and never attaches to the keep.
func TestLyingAgent(t *testing.T) {
	h := newHarness(t)
	art := artifact(t, fixtures.C(t, "hello"), nil)
	_, _, snap := ownerPolicy(t, art.Digest.String())
	other := h.create(t, "sim-snp", Limits{}) // a genuine hello for another nonce
	var otherHello delivery.Hello
	json.Unmarshal(other.Hello, &otherHello)
	agentKey, _ := delivery.NewSession() // any key the agent holds

	for _, tc := range []struct {
		name   string
		tamper func(*delivery.Hello)
		check  string
	}{
		{"flipped report byte", rewriteEnvelope(t, func(e *evidence.Envelope) { e.Evidence[0x90] ^= 1 }), "signature"},
		{"agent's own key", rewriteEnvelope(t, func(e *evidence.Envelope) { e.Key = agentKey.KeyHash }), "report_data"},
		{"replayed hello", func(hl *delivery.Hello) { *hl = otherHello }, "nonce"},
		{"other digest", rewriteEnvelope(t, func(e *evidence.Envelope) { e.WorkloadDigest = "sha256:" + strings.Repeat("1", 64) }), "report_data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := lyingAgent(t, h, tc.tamper)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var kid string
			_, _, err := c.Deploy(ctx, DeployOptions{Backend: "sim-snp", Verifier: &delivery.PolicyVerifier{Policy: snap},
				Delivery: delivery.Delivery{Artifact: art, Stdout: io.Discard},
				OnKeep:   func(k *Keep) { kid = k.ID },
				OnVerified: func(*delivery.Verified) {
					t.Error("tampered evidence verified")
				}})
			var ve *delivery.VerificationError
			if !errors.As(err, &ve) || ve.Check != tc.check {
				t.Fatalf("got %v, want a refusal at check %s", err, tc.check)
			}
			end := h.waitEnded(kid)
			if end.Attached || end.State != StateStopped {
				t.Errorf("keep after the refusal: attached %v, state %s", end.Attached, end.State)
			}
			var types []string
			h.client.Events(ctx, kid, false, func(e Event) { types = append(types, e.Type) })
			if strings.Contains(strings.Join(types, " "), "attached") {
				t.Errorf("the client attached after refusing: %v", types)
			}
		})
	}
}

// TestPolicyRefusesMeasurement: evidence that verifies but whose
// measurement the owner's database does not list is refused.
func TestPolicyRefusesMeasurement(t *testing.T) {
	h := newHarness(t)
	art := artifact(t, fixtures.C(t, "hello"), nil)
	_, _, snap := ownerPolicy(t, "sha256:"+strings.Repeat("2", 64)) // not this workload
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, _, _, _, err := h.deploy(ctx, "sim-snp", art, &delivery.PolicyVerifier{Policy: snap}, nil)
	var ve *delivery.VerificationError
	if !errors.As(err, &ve) || ve.Check != "workload" {
		t.Fatalf("got %v, want a refusal at check workload", err)
	}
	// Platform none is refused by a policy without allow_insecure.
	_, _, _, _, err = h.deploy(ctx, "nil", art, &delivery.PolicyVerifier{Policy: snap}, nil)
	if !errors.As(err, &ve) || ve.Check != "insecure" {
		t.Fatalf("nil backend: got %v, want a refusal at check insecure", err)
	}
	_ = bytes.Clone
}

func TestCPURateAccepted(t *testing.T) {
	max := Limits{MemoryBytes: 1 << 30, CPUSeconds: 60, WallSeconds: 60, OpenFiles: 100, VMMemoryBytes: 1 << 30, VCPUs: 2}
	for _, l := range []Limits{
		{},
		{CPUQuotaMicros: 50000, CPUPeriodMicros: 100000},
		{CPUQuotaMicros: 1000, CPUPeriodMicros: 1000},
		{CPUQuotaMicros: 4000000, CPUPeriodMicros: 1000000},
	} {
		got, err := checkLimits(l, max)
		if err != nil {
			t.Errorf("%+v: %v", l, err)
			continue
		}
		if got.CPUQuotaMicros != l.CPUQuotaMicros || got.CPUPeriodMicros != l.CPUPeriodMicros {
			t.Errorf("%+v became %+v", l, got)
		}
	}
}

// TestNoVolumesFromClients: only the host's own launcher (the containerd
// shim) gives a keep host folders; the agent's create request has no such
// field, so a client cannot make a keep open the host's files.
func TestNoVolumesFromClients(t *testing.T) {
	body := `{"backend":"nil","nonce":"bm9uY2U=","digest":"sha256:` + strings.Repeat("0", 64) + `","client_key":"` + strings.Repeat("A", 43) + `=","volumes":[{"guest":"/x","host":"/"}]}`
	if _, err := ParseCreateRequest([]byte(body)); err == nil || !strings.Contains(err.Error(), "volumes") {
		t.Errorf("a create request with volumes: %v, want refused", err)
	}
}

// TestKeepArgumentsRefused: a keep refuses volumes that are not
// absolute, clean paths and a secret service that is not an https URL with
// PEM roots, before it makes any evidence.
func TestKeepArgumentsRefused(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, []byte("not pem"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--secret-service", "http://attest.example"}, `arguments: secret service url "http://attest.example" is not an https://host[:port] URL`},
		{[]string{"--secret-service", "https://attest.example", "--secret-service-ca", ca}, "arguments: secret service roots: no PEM certificate in them"},
		{[]string{"--secret-service", "https://attest.example", "--secret-service-ca", ca + ".missing"}, "arguments: open " + ca + ".missing"},
	} {
		var stderr bytes.Buffer
		code := KeepMain(append([]string{"--dir", t.TempDir(), "--backend", "nil", "--nonce", "00", "--digest", "sha256:" + strings.Repeat("0", 64),
			"--client-key", strings.Repeat("00", 32)}, tc.args...), &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "keep failed: "+tc.want) || strings.Contains(stderr.String(), "evidence made") {
			t.Errorf("%q: exit %d, stderr %q, want %q", tc.args, code, stderr.String(), tc.want)
		}
	}
	for _, tc := range []struct{ volumes, want string }{
		{`[{"guest":"/data","host":"/tmp/../etc"}]`, `arguments: volume host path "/tmp/../etc" is not an absolute, clean path`},
		{`[{"guest":"data","host":"/tmp"}]`, `arguments: volume guest path "data" is not an absolute, clean path`},
		{`[{"guest":"/","host":"/tmp"}]`, "arguments: volume guest path / is the workload's root"},
		{`[{"guest":"/data","host":"/tmp","extra":1}]`, "arguments: "},
		{`{"guest":"/data"}`, "arguments: "},
	} {
		var stderr bytes.Buffer
		code := KeepMain([]string{"--dir", t.TempDir(), "--backend", "nil", "--nonce", "00", "--digest", "sha256:" + strings.Repeat("0", 64),
			"--client-key", strings.Repeat("00", 32), "--volumes", tc.volumes}, &stderr)
		if code != 1 || !strings.Contains(stderr.String(), "keep failed: "+tc.want) || strings.Contains(stderr.String(), "evidence made") {
			t.Errorf("%s: exit %d, stderr %q, want %q", tc.volumes, code, stderr.String(), tc.want)
		}
	}
}
