package sim

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/veraison/ccatoken"
	"github.com/veraison/ccatoken/platform"
	"github.com/veraison/ccatoken/realm"
	cose "github.com/veraison/go-cose"
	"github.com/veraison/psatoken"
)

// CCAOptions shape a simulated Arm CCA attestation token. The zero value
// gives a token of this executable's simulated realm on a secured platform.
type CCAOptions struct {
	RIM       []byte   // Realm Initial Measurement, 64 bytes (SHA-512); nil = CCAMeasurement()
	REMs      [][]byte // the four Realm Extensible Measurements; nil = four zero values
	Lifecycle uint16   // the platform's lifecycle state; 0 = secured (0x3000)
	// PlatformSoftware is the measurement of the platform's software
	// component; nil = CCAPlatformSoftware.
	PlatformSoftware []byte
	// UnboundRAK signs the realm token with a fresh key, which the
	// platform token does not bind (tests of the binding check).
	UnboundRAK bool
}

// Values of simulated CCA tokens.
const (
	ccaLifecycleSecured = platform.LifecycleSecuredMin
	ccaHashAlg          = "sha-512" // of the realm's measurements
	ccaRAKHashAlg       = "sha-256" // of the RAK, bound into the platform token
)

// CCAPlatformSoftware is the measurement of the simulated platform's one
// software component (an RMM), as simulated platform tokens report it.
var CCAPlatformSoftware = sha256.Sum256([]byte("castellan simulated CCA RMM"))

// CCAMeasurement returns the Realm Initial Measurement simulated CCA tokens
// from this executable claim: SHA-512 over the simulated launch measurement.
func CCAMeasurement() ([]byte, error) {
	m, err := Measurement()
	if err != nil {
		return nil, err
	}
	h := sha512.Sum512(append([]byte("castellan sim cca rim\x00"), m...))
	return h[:], nil
}

// generateCCA makes the simulated CPAK (with a self-signed certificate
// that is not a CA, so that a verifier tells it from the roots) and RAK,
// both ECDSA P-384 as Arm's.
func (ca *CA) generateCCA(r io.Reader) error {
	cpak, err := ecdsa.GenerateKey(elliptic.P384(), r)
	if err != nil {
		return err
	}
	rak, err := ecdsa.GenerateKey(elliptic.P384(), r)
	if err != nil {
		return err
	}
	sn, err := serial(r)
	if err != nil {
		return err
	}
	start := notBefore()
	t := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "Castellan simulated CCA platform attestation key (CPAK)", Organization: []string{simOrg}},
		NotBefore:             start,
		NotAfter:              start.AddDate(25, 0, 0),
		SignatureAlgorithm:    x509.ECDSAWithSHA384,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid(cpak.Public()),
	}
	cert, err := create(r, t, t, cpak.Public(), cpak)
	if err != nil {
		return err
	}
	ca.ccaCPAK, ca.ccaCPAKKey, ca.ccaRAKKey = cert, cpak, rak
	return nil
}

// CCAPlatformKey returns the simulated CPAK's certificate, or nil for a CA
// stored before CCA simulation existed.
func (ca *CA) CCAPlatformKey() *x509.Certificate { return ca.ccaCPAK }

// SignCCA returns a simulated CCA attestation token: the CBOR collection
// (tag 399) of a platform token signed by the simulated CPAK and a realm
// token signed by the simulated RAK, whose challenge is reportData and
// whose hash the platform token carries as its challenge.
func (ca *CA) SignCCA(reportData [64]byte, o CCAOptions) ([]byte, error) {
	if ca.ccaCPAK == nil {
		return nil, errors.New("simulated CCA token: this simulation CA has no CCA keys (delete it to have a new one made)")
	}
	rim := o.RIM
	if rim == nil {
		var err error
		if rim, err = CCAMeasurement(); err != nil {
			return nil, err
		}
	}
	rems := o.REMs
	if rems == nil {
		rems = [][]byte{make([]byte, 64), make([]byte, 64), make([]byte, 64), make([]byte, 64)}
	}
	lifecycle := o.Lifecycle
	if lifecycle == 0 {
		lifecycle = ccaLifecycleSecured
	}
	rakPub, err := coseKey(&ca.ccaRAKKey.PublicKey)
	if err != nil {
		return nil, err
	}

	r := realm.NewClaims()
	for _, set := range []error{
		r.SetChallenge(reportData[:]),
		r.SetPersonalizationValue(make([]byte, 64)),
		r.SetInitialMeasurement(rim),
		r.SetExtensibleMeasurements(rems),
		r.SetHashAlgID(ccaHashAlg),
		r.SetPubKey(rakPub),
		r.SetPubKeyHashAlgID(ccaRAKHashAlg),
	} {
		if set != nil {
			return nil, fmt.Errorf("simulated CCA realm token: %w", set)
		}
	}
	cpakPub, _ := x509.MarshalPKIXPublicKey(ca.ccaCPAKKey.Public())
	inst := sha256.Sum256(cpakPub)
	sw := CCAPlatformSoftware[:]
	if o.PlatformSoftware != nil {
		sw = o.PlatformSoftware
	}
	signerSum := sha256.Sum256([]byte("castellan simulated CCA firmware signer"))
	signer := signerSum[:]
	typ, version := "RMM", "1.0.0"
	impl := sha256.Sum256([]byte("castellan simulated CCA implementation"))
	p := platform.NewClaims()
	for _, set := range []error{
		p.SetImplID(impl[:]),
		p.SetInstID(append([]byte{0x01}, inst[:]...)), // UEID type RAND
		p.SetSecurityLifeCycle(lifecycle),
		p.SetConfig([]byte{0}),
		p.SetHashAlgID("sha-256"),
		p.SetSoftwareComponents([]psatoken.ISwComponent{&psatoken.SwComponent{
			MeasurementType: &typ, MeasurementValue: &sw, Version: &version, SignerID: &signer,
		}}),
	} {
		if set != nil {
			return nil, fmt.Errorf("simulated CCA platform token: %w", set)
		}
	}

	var ev ccatoken.Evidence
	if err := ev.SetClaims(p, r); err != nil {
		return nil, fmt.Errorf("simulated CCA token: %w", err)
	}
	rak := ca.ccaRAKKey
	if o.UnboundRAK {
		if rak, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			return nil, err
		}
		other, err := coseKey(&rak.PublicKey)
		if err != nil {
			return nil, err
		}
		if err := r.SetPubKey(other); err != nil {
			return nil, err
		}
	}
	ps, err := cose.NewSigner(cose.AlgorithmES384, ca.ccaCPAKKey)
	if err != nil {
		return nil, err
	}
	rs, err := cose.NewSigner(cose.AlgorithmES384, rak)
	if err != nil {
		return nil, err
	}
	tok, err := ev.Sign(ps, rs)
	if err != nil {
		return nil, fmt.Errorf("simulated CCA token: %w", err)
	}
	return tok, nil
}

// coseKey encodes a public key as a COSE_Key, the form of the realm
// token's RAK under the realm profile.
func coseKey(pub *ecdsa.PublicKey) ([]byte, error) {
	k, err := cose.NewKeyFromPublic(pub)
	if err != nil {
		return nil, err
	}
	return k.MarshalCBOR()
}

// ccaFile holds the CCA keys of a CA made before CCA simulation existed;
// CAs made since keep them in ca.pem.
const ccaFile = "cca.pem"

// encodeCCA returns the PEM blocks of the CCA keys, none if the CA has none.
func (ca *CA) encodeCCA() []byte {
	if ca.ccaCPAK == nil {
		return nil
	}
	var buf bytes.Buffer
	put := func(role, typ string, der []byte) {
		pem.Encode(&buf, &pem.Block{Type: typ, Headers: map[string]string{roleHeader: role}, Bytes: der})
	}
	cpak, err1 := x509.MarshalPKCS8PrivateKey(ca.ccaCPAKKey)
	rak, err2 := x509.MarshalPKCS8PrivateKey(ca.ccaRAKKey)
	if err1 != nil || err2 != nil {
		panic("simulation CA: cannot encode an ECDSA key") // x509 knows ECDSA
	}
	put(roleCCACPAK, "CERTIFICATE", ca.ccaCPAK.Raw)
	put(roleCCACPK, "PRIVATE KEY", cpak)
	put(roleCCARAK, "PRIVATE KEY", rak)
	return buf.Bytes()
}

// decodeCCA reads the CCA blocks, if any.
func (ca *CA) decodeCCA(blocks map[string]*pem.Block) error {
	cb, ok := blocks[roleCCACPAK]
	if !ok {
		return nil
	}
	kb, rb := blocks[roleCCACPK], blocks[roleCCARAK]
	if cb.Type != "CERTIFICATE" || kb == nil || rb == nil {
		return errors.New("incomplete CCA keys")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return fmt.Errorf("%s: %w", roleCCACPAK, err)
	}
	var keys [2]*ecdsa.PrivateKey
	for i, b := range []*pem.Block{kb, rb} {
		k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return fmt.Errorf("CCA key: %w", err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok || ek.Curve != elliptic.P384() {
			return errors.New("a CCA key has the wrong type")
		}
		keys[i] = ek
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(keys[0].Public()) {
		return errors.New("the CCA CPAK does not match its certificate")
	}
	ca.ccaCPAK, ca.ccaCPAKKey, ca.ccaRAKKey = cert, keys[0], keys[1]
	return nil
}

// loadOrCreateCCA gives a CA made before CCA simulation its CCA keys, from
// dir/cca.pem, creating the file if needed. As with ca.pem, concurrent
// first calls all end up with the file that won the exclusive link.
func (ca *CA) loadOrCreateCCA(dir string) error {
	path := filepath.Join(dir, ccaFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		fresh := &CA{}
		if err := fresh.generateCCA(rand.Reader); err != nil {
			return err
		}
		if err := createExclusive(path, fresh.encodeCCA()); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return err
	}
	blocks := map[string]*pem.Block{}
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		blocks[blk.Headers[roleHeader]] = blk
	}
	if err := ca.decodeCCA(blocks); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if ca.ccaCPAK == nil {
		return fmt.Errorf("%s: no CCA keys", path)
	}
	return nil
}
