package keepcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var digest = "sha256:" + strings.Repeat("0a", 32)

func TestArc(t *testing.T) {
	// 2.25 + the UUID f1dfe85b-c491-44fa-93f7-7584f8cd0f8b as an integer.
	u, _ := new(big.Int).SetString("f1dfe85bc49144fa93f77584f8cd0f8b", 16)
	if Arc != "2.25."+u.String() {
		t.Fatalf("Arc %s does not match the UUID", Arc)
	}
	if OIDPolicy.String() != Arc+".1" || OIDClaims.String() != Arc+".1.1" {
		t.Errorf("OIDs %s %s", OIDPolicy, OIDClaims)
	}
}

func TestClaimsRoundTrip(t *testing.T) {
	tests := []Claims{
		{Attested: true, Platform: PlatformSNP, TCB: map[string]uint64{"bootloader": 3, "snp": 22, "microcode": 213, "tee": 0},
			Measurement: make([]byte, 48), WorkloadDigest: digest, Package: "reg.example/app:1"},
		{Attested: true, Platform: PlatformTDX, Simulated: true, Insecure: true, TCB: map[string]uint64{"qe_svn": 8},
			Measurement: []byte{1, 2, 3}, WorkloadDigest: digest},
		{Attested: false, Platform: PlatformNone, Insecure: true, Measurement: []byte{}, WorkloadDigest: digest},
		{Attested: true, Platform: PlatformSNP, Debug: true, Measurement: []byte{}, WorkloadDigest: digest},
		{Attested: true, Platform: PlatformTDX, Measurement: []byte{}, WorkloadDigest: digest,
			Details: map[string]string{"tcb_status": "UpToDate", "rtmr0": "00ff", "collateral": "verified"}},
	}
	for _, c := range tests {
		der, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseClaims(der)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(*got, c) {
			t.Errorf("round trip:\n got %+v\nwant %+v", *got, c)
		}
	}
}

// TestDetailsCompatible: claims with details parse under the version 1
// structure that predates them (the details are a trailing optional field).
func TestDetailsCompatible(t *testing.T) {
	c := Claims{Attested: true, Platform: PlatformSNP, Measurement: []byte{}, WorkloadDigest: digest, Details: map[string]string{"vmpl": "0"}}
	der, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var old struct {
		Version        int
		Attested       bool
		Platform       string `asn1:"utf8"`
		Simulated      bool
		Insecure       bool
		Debug          bool
		TCB            []tcbComponent
		Measurement    []byte
		WorkloadDigest string `asn1:"utf8"`
		Package        string `asn1:"utf8"`
	}
	if rest, err := asn1.Unmarshal(der, &old); err != nil || len(rest) != 0 || old.Version != 1 || old.WorkloadDigest != digest {
		t.Errorf("version 1 parser: %+v, %v", old, err)
	}
}

// Marshal forces insecure where it must be, whatever the caller said.
func TestMarshalForcesInsecure(t *testing.T) {
	for _, c := range []Claims{
		{Attested: true, Platform: PlatformNone, WorkloadDigest: digest},
		{Attested: true, Platform: PlatformSNP, Simulated: true, WorkloadDigest: digest},
		{Attested: false, Platform: PlatformSNP, WorkloadDigest: digest},
	} {
		der, err := c.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseClaims(der)
		if err != nil || !got.Insecure {
			t.Errorf("%+v: parsed %+v, %v; want insecure", c, got, err)
		}
	}
}

func TestParseClaimsRejects(t *testing.T) {
	mk := func(w wireClaims) []byte {
		if w.TCB == nil {
			w.TCB = []tcbComponent{}
		}
		b, err := asn1.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := wireClaims{Version: 1, Attested: true, Platform: "snp", Measurement: []byte{}, WorkloadDigest: digest}
	tests := map[string][]byte{
		"empty":          nil,
		"trailing":       append(mk(good), 0),
		"version 2":      mk(func() wireClaims { w := good; w.Version = 2; return w }()),
		"platform sev":   mk(func() wireClaims { w := good; w.Platform = "sev"; return w }()),
		"secure sim":     mk(func() wireClaims { w := good; w.Simulated = true; return w }()),
		"secure none":    mk(func() wireClaims { w := good; w.Platform = "none"; return w }()),
		"secure unatt.":  mk(func() wireClaims { w := good; w.Attested = false; return w }()),
		"negative svn":   mk(func() wireClaims { w := good; w.TCB = []tcbComponent{{"snp", -1}}; return w }()),
		"repeated tcb":   mk(func() wireClaims { w := good; w.TCB = []tcbComponent{{"snp", 1}, {"snp", 2}}; return w }()),
		"bad digest":     mk(func() wireClaims { w := good; w.WorkloadDigest = "md5:00"; return w }()),
		"digest not hex": mk(func() wireClaims { w := good; w.WorkloadDigest = "sha256:\x1b[2J\nverified: yes"; return w }()),
		"short digest":   mk(func() wireClaims { w := good; w.WorkloadDigest = "sha256:0a"; return w }()),
		"upper digest":   mk(func() wireClaims { w := good; w.WorkloadDigest = "sha256:" + strings.Repeat("0A", 32); return w }()),
		"repeated detail": mk(func() wireClaims {
			w := good
			w.Details = []detail{{"vmpl", "0"}, {"vmpl", "3"}}
			return w
		}()),
		"empty detail name": mk(func() wireClaims { w := good; w.Details = []detail{{"", "x"}}; return w }()),
		"too many details": mk(func() wireClaims {
			w := good
			for i := 0; i <= maxDetails; i++ {
				w.Details = append(w.Details, detail{fmt.Sprint(i), "x"})
			}
			return w
		}()),
	}
	for name, der := range tests {
		if c, err := ParseClaims(der); err == nil {
			t.Errorf("%s: accepted as %+v", name, c)
		}
	}
}

func FuzzParseClaims(f *testing.F) {
	c := Claims{Attested: true, Platform: PlatformTDX, Simulated: true, Insecure: true, TCB: map[string]uint64{"qe_svn": 8, "pce_svn": 13},
		Measurement: make([]byte, 48), WorkloadDigest: digest, Package: "p"}
	der, _ := c.Marshal()
	f.Add(der)
	c.Details = map[string]string{"vmpl": "0", "collateral": "verified"}
	der, _ = c.Marshal()
	f.Add(der)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseClaims(b)
		if err != nil {
			return
		}
		// What parses marshals back to something that parses the same.
		der, err := c.Marshal()
		if err != nil {
			t.Fatalf("parsed claims do not marshal: %v", err)
		}
		again, err := ParseClaims(der)
		if err != nil || !reflect.DeepEqual(again, c) {
			t.Fatalf("re-parse: %+v, %v; want %+v", again, err, c)
		}
		if (!c.Attested || c.Platform == PlatformNone || c.Simulated) && !c.Insecure {
			t.Fatalf("secure claims for an insecure keep: %+v", c)
		}
	})
}

// testCA issues leaves carrying claims.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert, key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func (ca *testCA) leaf(t *testing.T, c *Claims, extra ...pkix.Extension) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, ExtraExtensions: extra}
	if c != nil {
		ext, err := Extension(c)
		if err != nil {
			t.Fatal(err)
		}
		tpl.ExtraExtensions = append(tpl.ExtraExtensions, ext)
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestVerifyChain(t *testing.T) {
	ca, other := newTestCA(t), newTestCA(t)
	snp := &Claims{Attested: true, Platform: PlatformSNP, TCB: map[string]uint64{"snp": 22}, Measurement: make([]byte, 48), WorkloadDigest: digest}
	sim := &Claims{Attested: true, Platform: PlatformTDX, Simulated: true, Insecure: true, WorkloadDigest: digest}
	tests := []struct {
		name  string
		chain []*x509.Certificate
		exp   Expect
		check string
	}{
		{"good", []*x509.Certificate{ca.leaf(t, snp)}, Expect{Roots: ca.pool(), Digest: digest, Platforms: []string{"snp", "tdx"}}, ""},
		{"with the CA in the chain", []*x509.Certificate{ca.leaf(t, snp), ca.cert}, Expect{Roots: ca.pool()}, ""},
		{"another CA", []*x509.Certificate{other.leaf(t, snp)}, Expect{Roots: ca.pool()}, CheckChain},
		{"another CA sent as intermediate", []*x509.Certificate{other.leaf(t, snp), other.cert}, Expect{Roots: ca.pool()}, CheckChain},
		{"no roots", []*x509.Certificate{ca.leaf(t, snp)}, Expect{}, CheckChain},
		{"expired", []*x509.Certificate{ca.leaf(t, snp)}, Expect{Roots: ca.pool(), Now: time.Now().Add(2 * time.Hour)}, CheckChain},
		{"no claims", []*x509.Certificate{ca.leaf(t, nil)}, Expect{Roots: ca.pool()}, CheckClaims},
		{"other workload", []*x509.Certificate{ca.leaf(t, snp)}, Expect{Roots: ca.pool(), Digest: "sha256:" + strings.Repeat("ff", 32)}, CheckDigest},
		{"other platform", []*x509.Certificate{ca.leaf(t, snp)}, Expect{Roots: ca.pool(), Platforms: []string{"tdx"}}, CheckPlatform},
		{"simulated", []*x509.Certificate{ca.leaf(t, sim)}, Expect{Roots: ca.pool()}, CheckInsecure},
		{"simulated allowed", []*x509.Certificate{ca.leaf(t, sim)}, Expect{Roots: ca.pool(), AllowInsecure: true}, ""},
		{"self-signed claiming attested", []*x509.Certificate{selfSigned(t, snp)}, Expect{AllowInsecure: true}, CheckChain},
		{"self-signed not attested", []*x509.Certificate{selfSigned(t, &Claims{Platform: PlatformNone, Insecure: true, WorkloadDigest: digest})}, Expect{AllowInsecure: true}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := VerifyChain(tt.chain, tt.exp)
			if tt.check == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.WorkloadDigest != digest {
					t.Errorf("claims %+v", c)
				}
				return
			}
			if !IsCheck(err, tt.check) {
				t.Fatalf("error %v, want check %s", err, tt.check)
			}
		})
	}
}

// selfSigned makes a self-signed leaf carrying c, as anyone could.
func selfSigned(t *testing.T, c *Claims) *x509.Certificate {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ext, err := Extension(c)
	if err != nil {
		t.Fatal(err)
	}
	tpl := &x509.Certificate{SerialNumber: big.NewInt(3), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{ext}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert
}

// A certificate carrying two claims qualifiers is refused: a relying party
// must not pick one.
func TestTwoClaims(t *testing.T) {
	ca := newTestCA(t)
	der, _ := (&Claims{Attested: true, Platform: PlatformSNP, WorkloadDigest: digest}).Marshal()
	pol, _ := OIDPolicy.MarshalBinary()
	qid, _ := OIDClaims.MarshalBinary()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(pol) })
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for range 2 {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(qid) })
						b.AddASN1OctetString(der)
					})
				}
			})
		})
	})
	leaf := ca.leaf(t, nil, pkix.Extension{Id: OIDCertificatePolicies, Value: b.BytesOrPanic()})
	if _, err := FromCertificate(leaf); err == nil || !strings.Contains(err.Error(), "more than once") {
		t.Fatalf("two claims: %v", err)
	}
}

// Go's crypto/x509 reads extension ids with cryptobyte's
// ReadASN1ObjectIdentifier, which refuses components of 2^31 or more, so a
// certificate with an extension under the arc itself would not parse; that
// is why the claims ride in certificate policies. If a Go release lifts the
// limit, this test skips and says so.
func TestArcExtensionUnparsableByGo(t *testing.T) {
	ca := newTestCA(t)
	leaf := ca.leaf(t, &Claims{Attested: true, Platform: PlatformSNP, WorkloadDigest: digest})
	// An Extension structure whose id is Arc.1.
	pol, _ := OIDPolicy.MarshalBinary()
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.OBJECT_IDENTIFIER, func(b *cryptobyte.Builder) { b.AddBytes(pol) })
		b.AddASN1OctetString([]byte{0x05, 0x00})
	})
	s := cryptobyte.String(b.BytesOrPanic())
	var ext cryptobyte.String
	var id asn1.ObjectIdentifier
	if !s.ReadASN1(&ext, cbasn1.SEQUENCE) {
		t.Fatal("bad test DER")
	}
	if ext.ReadASN1ObjectIdentifier(&id) {
		t.Skip("this Go parses 2.25 UUID OIDs as extension ids; the claims could move to an extension of their own")
	}
	if _, err := FromCertificate(leaf); err != nil {
		t.Fatal(err)
	}
}
