package kbs

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwe"
)

func TestParseRef(t *testing.T) {
	for _, c := range []struct {
		in, want string // want "" = error
	}{
		{"kbs:///default/db/password", "default/db/password"},
		{"kbs://kbs.example:8080/a/b/c", "a/b/c"},
		{"kbs:///a.b/c-d/e_1", "a.b/c-d/e_1"},
		{"kbs:///a/b", ""},
		{"kbs:///a/b/c/d", ""},
		{"kbs:///a/../c", ""},
		{"kbs:///a/./c", ""},
		{"kbs:///a//c", ""},
		{"kbs:///a/b/c%2f", ""},
		{"kbs:///a/b/" + strings.Repeat("x", 129), ""},
		{"https://x/a/b/c", ""},
		{"kbs://", ""},
		{"", ""},
	} {
		r, err := ParseRef(c.in)
		if c.want == "" {
			if err == nil {
				t.Errorf("ParseRef(%q) = %v, want an error", c.in, r)
			} else if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %v", err)
			}
			continue
		}
		if err != nil || r.Path() != c.want || r.String() != "kbs:///"+c.want {
			t.Errorf("ParseRef(%q) = %v, %v", c.in, r, err)
		}
	}
}

func TestCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`{"b": 1, "a": [true, null, "x\u0001\n"]}`, `{"a":[true,null,"x\u0001\n"],"b":1}`},
		{` "<&>\u2028" `, `"<&>` + "\u2028" + `"`},
		{`{"z":{"y":2.5,"x":-0}}`, `{"z":{"x":0,"y":2.5}}`},
		// RFC 8785 section 3.2.3: members sorted by UTF-16 code units.
		{`{"\u20ac":1,"\r":2,"\ufb33":3,"1":4,"\ud83d\ude00":5,"\u0080":6,"\u00f6":7}`,
			"{\"\\r\":2,\"1\":4,\"\u0080\":6,\"\u00f6\":7,\"\u20ac\":1,\"\U0001F600\":5,\"\ufb33\":3}"},
	} {
		got, err := Canonical([]byte(c.in))
		if err != nil || string(got) != c.want {
			t.Errorf("Canonical(%s) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{``, `{`, `{"a":1} {}`, strings.Repeat("[", 40) + strings.Repeat("]", 40), `1e400`} {
		if _, err := Canonical([]byte(bad)); err == nil {
			t.Errorf("Canonical(%.20q) accepted", bad)
		}
	}
}

func TestReportData(t *testing.T) {
	rt := []byte(`{"tee-pubkey": {"kty":"EC"}, "nonce": "abc"}`)
	canon := `{"nonce":"abc","tee-pubkey":{"kty":"EC"}}`
	h384 := sha512.Sum384([]byte(canon))
	h256 := sha256.Sum256([]byte(canon))
	for _, c := range []struct {
		name string
		want []byte
	}{{"", h384[:]}, {"sha384", h384[:]}, {"SHA256", h256[:]}} {
		got, err := ReportData(c.name, rt)
		if err != nil || !bytes.Equal(got[:len(c.want)], c.want) || !bytes.Equal(got[len(c.want):], make([]byte, 64-len(c.want))) {
			t.Errorf("ReportData(%q) = %x, %v", c.name, got, err)
		}
	}
	if _, err := ReportData("md5", rt); err == nil {
		t.Error("md5 accepted")
	}
}

func TestParseEvidence(t *testing.T) {
	report := base64.StdEncoding.EncodeToString([]byte("REPORT"))
	good := map[string]string{
		"castellan":   `{"platform":"snp","report":"` + report + `","endorsements":["` + report + `"]}`,
		"composite":   `{"primary_evidence":{"platform":"snp","report":"` + report + `"},"additional_evidence":""}`,
		"trustee tdx": `{"quote":"` + report + `","cc_eventlog":null}`,
		// Older guest components send the attester's JSON as a string.
		"trustee tdx string": `"{\"cc_eventlog\":null,\"quote\":\"` + report + `\"}"`,
		"composite string":   `{"primary_evidence":"{\"platform\":\"snp\",\"report\":\"` + report + `\"}","additional_evidence":""}`,
	}
	for name, in := range good {
		platform := "snp"
		if strings.HasPrefix(name, "trustee") {
			platform = "tdx"
		}
		ev, err := ParseEvidence(platform, []byte(in))
		if err != nil || string(ev.Report) != "REPORT" {
			t.Errorf("%s: %v", name, err)
		}
		if strings.HasPrefix(name, "composite") && (ev.Additional == nil || *ev.Additional != "") {
			t.Errorf("composite: additional %v", ev.Additional)
		}
	}
	for name, in := range map[string]string{
		"not json":          `{`,
		"array":             `[]`,
		"platform mismatch": `{"platform":"tdx","report":"` + report + `"}`,
		"no report":         `{"platform":"snp"}`,
		"unknown field":     `{"platform":"snp","report":"` + report + `","extra":1}`,
		"bad base64":        `{"platform":"snp","report":"!!"}`,
		"quote for snp":     `{"quote":"` + report + `"}`,
		"quote base64":      `{"quote":"!!"}`,
		"composite no add":  `{"primary_evidence":{"platform":"snp","report":"` + report + `"}}`,
		"composite junk":    `{"primary_evidence":7,"additional_evidence":""}`,
		"sev crate form":    `{"attestation_report":{"version":2},"cert_chain":null}`,
		"string of junk":    `"{"`,
		"bad string":        `"\x"`,
	} {
		platform := "snp"
		if strings.HasPrefix(name, "quote base64") {
			platform = "tdx"
		}
		if _, err := ParseEvidence(platform, []byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "tee-evidence") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

func TestJWE(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	r2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	secret := []byte("the value")
	for name, k := range map[string]crypto.Signer{"P-256": p256, "P-384": p384, "RSA": r2048} {
		jwk, err := PublicJWK(k.Public())
		if err != nil {
			t.Fatal(err)
		}
		tk, err := ParseTEEKey(jwk)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, err := Seal(tk, secret)
		if err != nil {
			t.Fatal(err)
		}
		// The flattened JSON serialization, as the KBS protocol has it.
		var m map[string]json.RawMessage
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"protected", "encrypted_key", "iv", "ciphertext", "tag"} {
			if m[f] == nil {
				t.Errorf("%s: no %s in %s", name, f, body)
			}
		}
		if bytes.Contains(body, secret) {
			t.Errorf("%s: plaintext in the JWE", name)
		}
		got, err := Open(k, body)
		if err != nil || !bytes.Equal(got, secret) {
			t.Errorf("%s: Open = %q, %v", name, got, err)
		}
		if _, err := Open(stranger, body); err == nil {
			t.Errorf("%s: a stranger's key opened it", name)
		}
		var ct string
		json.Unmarshal(m["ciphertext"], &ct)
		raw, _ := base64.RawURLEncoding.DecodeString(ct)
		raw[0] ^= 1
		m["ciphertext"], _ = json.Marshal(base64.RawURLEncoding.EncodeToString(raw))
		tampered, _ := json.Marshal(m)
		if _, err := Open(k, tampered); err == nil {
			t.Errorf("%s: tampered ciphertext opened", name)
		}
	}
}

// TestJWECompressed: a response compressed with "zip": "DEF" is refused
// before decryption. Compression buys a service nothing for values of at
// most 64 KiB, and a hostile one (the host may name the service) would
// have the keep inflate up to the library's 10 MiB per value.
func TestJWECompressed(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	body, err := jwe.Encrypt(bytes.Repeat([]byte{'a'}, 1<<20), jwe.WithKey(jwa.ECDH_ES_A256KW(), k.Public()),
		jwe.WithContentEncryption(jwa.A256GCM()), jwe.WithCompress(jwa.Deflate()), jwe.WithJSON())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Open(k, body); err == nil || !strings.Contains(err.Error(), "zip") {
		t.Errorf("compressed JWE of %d bytes: opened %d bytes, %v", len(body), len(got), err)
	}
}
