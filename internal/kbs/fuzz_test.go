package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"strings"
	"testing"
)

func TestParseTEEKeyRefusals(t *testing.T) {
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	r1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk := func(k any) string {
		b, err := PublicJWK(k)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	withAlg := func(s, alg string) string {
		var m map[string]any
		json.Unmarshal([]byte(s), &m)
		m["alg"] = alg
		b, _ := json.Marshal(m)
		return string(b)
	}
	for name, in := range map[string]string{
		"empty":          ``,
		"not json":       `{`,
		"P-521":          jwk(p521.Public()),
		"RSA 1024":       jwk(r1024.Public()),
		"oct":            `{"kty":"oct","k":"AAAA"}`,
		"EC with RSA1_5": withAlg(jwk(p256.Public()), "RSA1_5"),
		"EC with A256KW": withAlg(jwk(p256.Public()), "A256KW"),
		"old k-mod form": `{"alg":"RSA1_5","k-mod":"AQAB","k-exp":"AQAB"}`,
		"private part":   `{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","d":"AAAA"}`,
	} {
		if _, err := ParseTEEKey([]byte(in)); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "tee-pubkey") {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

func FuzzParseTEEKey(f *testing.F) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := PublicJWK(p256.Public())
	f.Add([]byte(good))
	f.Add([]byte(`{"kty":"RSA","n":"AQAB","e":"AQAB"}`))
	f.Add([]byte(`{"kty":"EC","crv":"P-256","x":"","y":""}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseTEEKey(b)
		if err == nil && (k.Public == nil || k.Alg.String() == "") {
			t.Fatal("accepted without a key")
		}
	})
}

func FuzzParseEvidence(f *testing.F) {
	f.Add("snp", []byte(`{"platform":"snp","report":"UkVQT1JU","endorsements":["UkVQT1JU"]}`))
	f.Add("snp", []byte(`{"primary_evidence":{"platform":"snp","report":"UkVQT1JU"},"additional_evidence":"{}"}`))
	f.Add("tdx", []byte(`{"quote":"UkVQT1JU","cc_eventlog":null}`))
	f.Add("tdx", []byte(`"{\"quote\":\"UkVQT1JU\"}"`))
	f.Add("tdx", []byte(`{"primary_evidence":{"quote":"UkVQT1JU"},"additional_evidence":""}`))
	f.Add("sgx", []byte(`{"quote":"UkVQT1JU"}`))
	f.Add("cca", []byte(`{"token":[82,69,80,79,82,84]}`))
	f.Add("cca", []byte(`{"primary_evidence":{"token":[1]},"additional_evidence":""}`))
	f.Fuzz(func(t *testing.T, platform string, b []byte) {
		ev, err := ParseEvidence(platform, b)
		if err != nil {
			return
		}
		if len(ev.Report) == 0 || ev.Platform != platform {
			t.Fatalf("accepted %+v", ev)
		}
		if _, err := BoundRuntimeData([]byte(`{"nonce":"x"}`), ev); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzCanonical(f *testing.F) {
	f.Add([]byte(`{"b":1,"a":[true,null,"x\u0001"]}`))
	f.Add([]byte(`{"\u20ac":1,"\r":2,"\ud83d\ude00":5}`))
	f.Add([]byte(`[1.5e3, -0, "\ud800"]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Canonical(b)
		if err != nil {
			return
		}
		// The canonical form is valid JSON and a fixed point.
		c2, err := Canonical(c)
		if err != nil || string(c2) != string(c) {
			t.Fatalf("not a fixed point: %s → %s (%v)", c, c2, err)
		}
	})
}

func FuzzOpen(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, _ := PublicJWK(k.Public())
	tk, _ := ParseTEEKey(jwk)
	good, _ := Seal(tk, []byte("value"))
	f.Add(good)
	f.Add([]byte(`{"protected":"e30","encrypted_key":"","iv":"","ciphertext":"","tag":""}`))
	f.Add([]byte(`a.b.c.d.e`))
	// Open parses what a KBS answered: it must refuse, not panic, on
	// anything malformed, and give back only the sealed value.
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := Open(k, b); err == nil && len(v) > len(b) {
			t.Fatalf("opened %d bytes from a %d-byte message", len(v), len(b))
		}
	})
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"kbs:///a/b/c", "kbs://h/a/b/c", "kbs:///a/../c", "kbs:///%2e/b/c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		if strings.Contains(r.Path(), "..") && (r.Repo == ".." || r.Type == ".." || r.Tag == "..") {
			t.Fatalf("%q gave %v", s, r)
		}
		if r2, err := ParseRef(r.String()); err != nil || r2 != r {
			t.Fatalf("%q: round trip %v %v", s, r2, err)
		}
	})
}
