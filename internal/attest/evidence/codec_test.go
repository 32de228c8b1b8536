package evidence

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func validEnvelopes() map[string]*Envelope {
	return map[string]*Envelope{
		"none": {Platform: PlatformNone, Key: []byte("spki"), Nonce: []byte("nonce"), WorkloadDigest: testDigest},
		"snp": {Platform: PlatformSNP, Evidence: make([]byte, snpReportSize), Endorsements: [][]byte{{1}, {2}, {3}},
			Key: []byte("spki"), Nonce: bytes.Repeat([]byte{9}, 32), WorkloadDigest: testDigest},
		"tdx": {Platform: PlatformTDX, Evidence: make([]byte, 5000), Key: []byte("spki"), WorkloadDigest: testDigest},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, e := range validEnvelopes() {
		t.Run(name, func(t *testing.T) {
			b, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			b2, err := got.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, b2) {
				t.Errorf("re-encoding differs:\n%x\n%x", b, b2)
			}
			if got.Platform != e.Platform || !bytes.Equal(got.Key, e.Key) || got.WorkloadDigest != e.WorkloadDigest || len(got.Endorsements) != len(e.Endorsements) {
				t.Errorf("got %+v, want %+v", got, e)
			}
		})
	}
}

// TestGolden pins the wire format: integer keys, deterministic order.
func TestGolden(t *testing.T) {
	b, err := validEnvelopes()["none"].Marshal()
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "none.cbor.hex")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.WriteFile(golden, []byte(hex.EncodeToString(b)+"\n"), 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != strings.TrimSpace(string(want)) {
		t.Errorf("encoding changed:\n got %s\nwant %s", got, want)
	}
}

func enc(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRefuses(t *testing.T) {
	good, _ := validEnvelopes()["none"].Marshal()
	withKey := func(k int, v any) []byte {
		m := map[int]any{1: PlatformNone, 2: []byte{}, 4: []byte("spki"), 5: []byte("n"), 6: testDigest}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return enc(t, m)
	}
	// A map with key 1 twice: a1 → a2 and the same key repeated.
	dup := append([]byte{0xa2}, enc(t, 1)...)
	dup = append(dup, enc(t, PlatformNone)...)
	dup = append(dup, enc(t, 1)...)
	dup = append(dup, enc(t, PlatformSNP)...)
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"too big", make([]byte, MaxEnvelopeSize+1), "limit"},
		{"array", enc(t, []any{"none"}), "not a CBOR map"},
		{"trailing bytes", append(append([]byte{}, good...), 0x00), "extraneous"},
		{"unknown key", withKey(7, "x"), "unknown field"},
		{"duplicate key", dup, "duplicate"},
		{"unknown platform", withKey(1, "sev"), "unknown platform"},
		{"sgx short quote", withKey(1, PlatformSGX), "SGX quote is 0 bytes"},
		{"cca short token", withKey(1, PlatformCCA), "CCA token is 0 bytes"},
		{"no platform", withKey(1, nil), "no platform"},
		{"none with evidence", withKey(2, []byte{1}), "carries no evidence"},
		{"snp short report", withKey(1, PlatformSNP), "SEV-SNP report is 0 bytes"},
		{"no key", withKey(4, nil), "key is 0 bytes"},
		{"huge nonce", withKey(5, make([]byte, MaxNonceSize+1)), "nonce"},
		{"bad digest", withKey(6, "sha256:XYZ"), "workload digest"},
		{"uppercase digest", withKey(6, strings.ToUpper(testDigest)), "workload digest"},
		{"wrong type", withKey(4, "a string"), "cannot unmarshal"},
		{"indefinite length", []byte{0xbf, 0x01, 0x64, 'n', 'o', 'n', 'e', 0xff}, "indefinite"},
		{"tag", append([]byte{0xc1}, good...), "not a CBOR map"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse accepted %x", tc.in)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error has several lines: %q", err)
			}
		})
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	e := validEnvelopes()["snp"]
	e.Evidence = e.Evidence[:10]
	if _, err := e.Marshal(); err == nil {
		t.Fatal("Marshal accepted a short SEV-SNP report")
	}
}

func TestReportDataBindsEachInput(t *testing.T) {
	base := ReportData([]byte("key"), []byte("nonce"), testDigest)
	for name, rd := range map[string][64]byte{
		"key":    ReportData([]byte("key2"), []byte("nonce"), testDigest),
		"nonce":  ReportData([]byte("key"), []byte("nonce2"), testDigest),
		"digest": ReportData([]byte("key"), []byte("nonce"), strings.Replace(testDigest, "0", "1", 1)),
		// Length prefixes keep bytes from moving between fields.
		"shift": ReportData([]byte("keyn"), []byte("once"), testDigest),
	} {
		if rd == base {
			t.Errorf("changing %s does not change the report data", name)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, e := range validEnvelopes() {
		b, _ := e.Marshal()
		f.Add(b)
	}
	f.Add([]byte{0xa0})
	f.Add([]byte{0xbf, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if err != nil {
			if e != nil {
				t.Fatal("Parse returned an envelope and an error")
			}
			return
		}
		// Whatever Parse accepts must re-encode to an envelope Parse accepts
		// with the same content.
		b2, err := e.Marshal()
		if err != nil {
			t.Fatalf("Parse accepted what Marshal refuses: %v", err)
		}
		e2, err := Parse(b2)
		if err != nil {
			t.Fatalf("re-encoded envelope refused: %v", err)
		}
		if e2.Platform != e.Platform || !bytes.Equal(e2.Evidence, e.Evidence) || !bytes.Equal(e2.Key, e.Key) ||
			!bytes.Equal(e2.Nonce, e.Nonce) || e2.WorkloadDigest != e.WorkloadDigest || len(e2.Endorsements) != len(e.Endorsements) {
			t.Fatalf("round trip changed the envelope: %+v vs %+v", e, e2)
		}
	})
}
