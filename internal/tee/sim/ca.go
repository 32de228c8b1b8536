// Package sim is Castellan's simulated TEE: a local certificate authority
// that signs SEV-SNP attestation reports and TDX v4 quotes in the exact
// vendor binary formats, so that every verification path (the vendor
// libraries' chain and signature checks, claim extraction, policy) runs on a
// machine without the hardware. Only the trust root differs from real
// evidence: an SNP report chains VCEK → ASK → ARK to a local ARK, a TDX
// quote chains PCK → PCK platform CA → root to a local root, and a verifier
// trusts them only when its policy names those roots.
//
// The CA is generated once per user and stored in the config directory
// ($CASTELLAN_CONFIG_DIR, else os.UserConfigDir()/castellan) under sim/:
// ca.pem holds the keys and certificates (0600), roots.pem the two root
// certificates a policy can name.
package sim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/castellan-dev/castellan/internal/pemcerts"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Role names written as the "Castellan-Role" PEM header in ca.pem.
const (
	roleSNPARK  = "snp-ark"
	roleSNPARKK = "snp-ark-key"
	roleSNPASK  = "snp-ask"
	roleSNPASKK = "snp-ask-key"
	roleSNPVCEK = "snp-vcek-key"
	roleSNPASVK = "snp-asvk"
	roleSNPAVK  = "snp-asvk-key"
	roleSNPVLEK = "snp-vlek-key"
	roleTDXRoot = "tdx-root"
	roleTDXPCA  = "tdx-pck-ca"
	roleTDXPCK  = "tdx-pck"
	roleTDXPCKK = "tdx-pck-key"
	roleTDXRK   = "tdx-root-key"
	roleTDXPCAK = "tdx-pck-ca-key"
	roleTDXAK   = "tdx-attestation-key"
	roleHeader  = "Castellan-Role"
)

// File names inside the sim directory.
const (
	caFile    = "ca.pem"
	rootsFile = "roots.pem"
)

// simOrg marks every simulation certificate so that no one mistakes it for
// a vendor's.
const simOrg = "Castellan simulation (not a hardware vendor)"

// CA is a simulation certificate authority for both platforms.
type CA struct {
	// Dir is where the CA is stored; empty for an in-memory CA from New.
	Dir string

	snpARK  *x509.Certificate
	arkKey  *rsa.PrivateKey // signs the simulated CRLs; nil in CAs stored before collateral
	snpASK  *x509.Certificate
	askKey  *rsa.PrivateKey
	vcekKey *ecdsa.PrivateKey
	chipID  [64]byte
	// The VLEK chain (ARK → ASVK → VLEK), which cloud providers use instead
	// of the chip-specific VCEK. Absent in CAs stored before it existed.
	snpASVK *x509.Certificate
	asvkKey *rsa.PrivateKey
	vlekKey *ecdsa.PrivateKey

	tdxRoot *x509.Certificate
	tdxPCA  *x509.Certificate
	// The root's and the platform CA's keys sign the simulated TCB info,
	// QE identity and CRLs; nil in CAs stored before collateral.
	tdxRootKey, pcaKey *ecdsa.PrivateKey
	tdxPCK             *x509.Certificate
	pckKey             *ecdsa.PrivateKey
	akKey              *ecdsa.PrivateKey
	pckPEM             []byte // PCK leaf || platform CA || root, as a quote carries it

	mu         sync.Mutex
	collateral collateral.Map               // made on first use (collateral.go)
	vceks      map[uint64]*x509.Certificate // VCEK certificates by TCB version
	vleks      map[uint64]*x509.Certificate // VLEK certificates by TCB version
}

// DefaultDir returns the directory where the user's simulation CA lives:
// $CASTELLAN_CONFIG_DIR/sim if set, else os.UserConfigDir()/castellan/sim.
func DefaultDir() (string, error) {
	if d := os.Getenv("CASTELLAN_CONFIG_DIR"); d != "" {
		return filepath.Join(d, "sim"), nil
	}
	d, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("simulation CA: no config directory (set CASTELLAN_CONFIG_DIR): %w", err)
	}
	return filepath.Join(d, "castellan", "sim"), nil
}

// RootsPath returns the path of the roots file of the CA stored in dir.
func RootsPath(dir string) string { return filepath.Join(dir, rootsFile) }

var (
	loadedMu sync.Mutex
	loaded   = map[string]*CA{}
)

// Default loads the user's simulation CA from DefaultDir, creating it on
// first use. The result is cached for the life of the process.
func Default() (*CA, error) {
	dir, err := DefaultDir()
	if err != nil {
		return nil, err
	}
	return Load(dir)
}

// Load reads the CA stored in dir, or generates and stores one if there is
// none. Concurrent first calls, in this process or others, end with every
// caller holding the same CA: the file is created with an exclusive link and
// a loser reads the winner's file.
func Load(dir string) (*CA, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("simulation CA %s: %w", dir, err)
	}
	loadedMu.Lock()
	defer loadedMu.Unlock()
	if ca, ok := loaded[abs]; ok {
		return ca, nil
	}
	ca, err := loadOrCreate(abs)
	if err != nil {
		return nil, err
	}
	loaded[abs] = ca
	return ca, nil
}

func loadOrCreate(dir string) (*CA, error) {
	path := filepath.Join(dir, caFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("simulation CA: %w", err)
		}
		ca, err := New()
		if err != nil {
			return nil, err
		}
		if err := createExclusive(path, ca.encode()); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("simulation CA: %w", err)
		}
		// Whether this process or another won the race, the file is the CA.
		b, err = os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("simulation CA: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("simulation CA: %w", err)
	}
	ca, err := decode(b)
	if err != nil {
		return nil, fmt.Errorf("simulation CA %s: %w", path, err)
	}
	ca.Dir = dir
	roots := ca.RootsPEM()
	if old, err := os.ReadFile(filepath.Join(dir, rootsFile)); err != nil || !bytes.Equal(old, roots) {
		if err := replaceFile(filepath.Join(dir, rootsFile), roots, 0o644); err != nil {
			return nil, fmt.Errorf("simulation CA: %w", err)
		}
	}
	if err := ca.refreshCollateral(); err != nil {
		return nil, fmt.Errorf("simulation CA: %w", err)
	}
	return ca, nil
}

// createExclusive writes b to a temporary file and links it to path, which
// fails with os.ErrExist if path exists: the file appears complete or not at all.
func createExclusive(path string, b []byte) error {
	tmp, err := writeTemp(filepath.Dir(path), b, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	err = os.Link(tmp, path)
	if err == nil || errors.Is(err, os.ErrExist) {
		return err
	}
	// A file system without hard links: exclusive create. A racing reader
	// may then see a partial file and fail once; the next start succeeds.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if err := f.Close(); werr == nil {
		werr = err
	}
	return werr
}

// replaceFile atomically replaces path with b.
func replaceFile(path string, b []byte, mode os.FileMode) error {
	tmp, err := writeTemp(filepath.Dir(path), b, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func writeTemp(dir string, b []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", err
	}
	name := f.Name()
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if err := f.Close(); werr == nil {
		werr = err
	}
	if werr != nil {
		os.Remove(name)
		return "", werr
	}
	return name, nil
}

// New generates a CA in memory without storing it. Tests use it for a
// second, untrusted root.
func New() (*CA, error) {
	ca := &CA{}
	if err := ca.generateSNP(rand.Reader); err != nil {
		return nil, fmt.Errorf("simulation CA: SEV-SNP chain: %w", err)
	}
	if err := ca.generateTDX(rand.Reader); err != nil {
		return nil, fmt.Errorf("simulation CA: TDX chain: %w", err)
	}
	ca.init()
	return ca, nil
}

func (ca *CA) init() {
	ca.vceks = map[uint64]*x509.Certificate{}
	ca.vleks = map[uint64]*x509.Certificate{}
	// The chip ID is derived from the VCEK key so that it needs no storage.
	pub, _ := x509.MarshalPKIXPublicKey(ca.vcekKey.Public())
	ca.chipID = sha512.Sum512(append([]byte("castellan sim chip id"), pub...))
	var buf bytes.Buffer
	for _, c := range []*x509.Certificate{ca.tdxPCK, ca.tdxPCA, ca.tdxRoot} {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	ca.pckPEM = buf.Bytes()
}

// Roots returns the CA's trust anchors: the SEV-SNP ARK and the TDX root.
func (ca *CA) Roots() []*x509.Certificate {
	return []*x509.Certificate{ca.snpARK, ca.tdxRoot}
}

// RootsPEM returns Roots as PEM, the form a policy names.
func (ca *CA) RootsPEM() []byte {
	var buf bytes.Buffer
	for _, c := range ca.Roots() {
		pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return buf.Bytes()
}

// RootsPath returns the path of roots.pem, or "" for an in-memory CA.
func (ca *CA) RootsPath() string {
	if ca.Dir == "" {
		return ""
	}
	return RootsPath(ca.Dir)
}

// ParseRootsPEM reads the certificates of a roots file (or any PEM bundle).
func ParseRootsPEM(b []byte) ([]*x509.Certificate, error) {
	out, err := pemcerts.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("simulation roots: %w", err)
	}
	return out, nil
}

// LoadRoots reads the roots file at path, as written by Load.
func LoadRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulation roots: %w", err)
	}
	certs, err := ParseRootsPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return certs, nil
}

func (ca *CA) encode() []byte {
	var buf bytes.Buffer
	put := func(role, typ string, der []byte) {
		pem.Encode(&buf, &pem.Block{Type: typ, Headers: map[string]string{roleHeader: role}, Bytes: der})
	}
	key := func(k crypto.Signer) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			panic(err) // only for key types x509 does not know
		}
		return der
	}
	put(roleSNPARK, "CERTIFICATE", ca.snpARK.Raw)
	if ca.arkKey != nil {
		put(roleSNPARKK, "PRIVATE KEY", key(ca.arkKey))
	}
	put(roleSNPASK, "CERTIFICATE", ca.snpASK.Raw)
	put(roleSNPASKK, "PRIVATE KEY", key(ca.askKey))
	put(roleSNPVCEK, "PRIVATE KEY", key(ca.vcekKey))
	if ca.snpASVK != nil {
		put(roleSNPASVK, "CERTIFICATE", ca.snpASVK.Raw)
		put(roleSNPAVK, "PRIVATE KEY", key(ca.asvkKey))
		put(roleSNPVLEK, "PRIVATE KEY", key(ca.vlekKey))
	}
	put(roleTDXRoot, "CERTIFICATE", ca.tdxRoot.Raw)
	put(roleTDXPCA, "CERTIFICATE", ca.tdxPCA.Raw)
	put(roleTDXPCK, "CERTIFICATE", ca.tdxPCK.Raw)
	put(roleTDXPCKK, "PRIVATE KEY", key(ca.pckKey))
	if ca.tdxRootKey != nil {
		put(roleTDXRK, "PRIVATE KEY", key(ca.tdxRootKey))
		put(roleTDXPCAK, "PRIVATE KEY", key(ca.pcaKey))
	}
	put(roleTDXAK, "PRIVATE KEY", key(ca.akKey))
	return buf.Bytes()
}

func decode(b []byte) (*CA, error) {
	blocks := map[string]*pem.Block{}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		role := blk.Headers[roleHeader]
		if _, dup := blocks[role]; dup {
			return nil, fmt.Errorf("two %q blocks", role)
		}
		blocks[role] = blk
	}
	ca := &CA{}
	var err error
	cert := func(role string) *x509.Certificate {
		if err != nil {
			return nil
		}
		blk, ok := blocks[role]
		if !ok || blk.Type != "CERTIFICATE" {
			err = fmt.Errorf("no %s certificate", role)
			return nil
		}
		var c *x509.Certificate
		if c, err = x509.ParseCertificate(blk.Bytes); err != nil {
			err = fmt.Errorf("%s: %w", role, err)
		}
		return c
	}
	key := func(role string) any {
		if err != nil {
			return nil
		}
		blk, ok := blocks[role]
		if !ok || blk.Type != "PRIVATE KEY" {
			err = fmt.Errorf("no %s", role)
			return nil
		}
		var k any
		if k, err = x509.ParsePKCS8PrivateKey(blk.Bytes); err != nil {
			err = fmt.Errorf("%s: %w", role, err)
		}
		return k
	}
	ca.snpARK, ca.snpASK = cert(roleSNPARK), cert(roleSNPASK)
	askKey, vcekKey := key(roleSNPASKK), key(roleSNPVCEK)
	ca.tdxRoot, ca.tdxPCA, ca.tdxPCK = cert(roleTDXRoot), cert(roleTDXPCA), cert(roleTDXPCK)
	pckKey, akKey := key(roleTDXPCKK), key(roleTDXAK)
	if err != nil {
		return nil, err
	}
	var ok1, ok2, ok3, ok4 bool
	ca.askKey, ok1 = askKey.(*rsa.PrivateKey)
	ca.vcekKey, ok2 = vcekKey.(*ecdsa.PrivateKey)
	ca.pckKey, ok3 = pckKey.(*ecdsa.PrivateKey)
	ca.akKey, ok4 = akKey.(*ecdsa.PrivateKey)
	if !ok1 || !ok2 || !ok3 || !ok4 {
		return nil, errors.New("a key has the wrong type")
	}
	if ca.vcekKey.Curve != elliptic.P384() || ca.pckKey.Curve != elliptic.P256() || ca.akKey.Curve != elliptic.P256() {
		return nil, errors.New("a key is on the wrong curve")
	}
	if !ca.snpASK.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.askKey.Public()) ||
		!ca.tdxPCK.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(ca.pckKey.Public()) {
		return nil, errors.New("a key does not match its certificate")
	}
	if _, ok := blocks[roleSNPASVK]; ok {
		ca.snpASVK = cert(roleSNPASVK)
		asvkKey, vlekKey := key(roleSNPAVK), key(roleSNPVLEK)
		if err != nil {
			return nil, err
		}
		ca.asvkKey, ok1 = asvkKey.(*rsa.PrivateKey)
		ca.vlekKey, ok2 = vlekKey.(*ecdsa.PrivateKey)
		if !ok1 || !ok2 || ca.vlekKey.Curve != elliptic.P384() {
			return nil, errors.New("a VLEK chain key has the wrong type")
		}
	}
	if _, ok := blocks[roleTDXRK]; ok {
		rk, pk := key(roleTDXRK), key(roleTDXPCAK)
		if err != nil {
			return nil, err
		}
		ca.tdxRootKey, ok1 = rk.(*ecdsa.PrivateKey)
		ca.pcaKey, ok2 = pk.(*ecdsa.PrivateKey)
		if !ok1 || !ok2 || !ca.tdxRoot.PublicKey.(*ecdsa.PublicKey).Equal(ca.tdxRootKey.Public()) || !ca.tdxPCA.PublicKey.(*ecdsa.PublicKey).Equal(ca.pcaKey.Public()) {
			return nil, errors.New("the TDX root or platform CA key has the wrong type or does not match its certificate")
		}
	}
	if _, ok := blocks[roleSNPARKK]; ok {
		k := key(roleSNPARKK)
		if err != nil {
			return nil, err
		}
		if ca.arkKey, ok1 = k.(*rsa.PrivateKey); !ok1 || !ca.snpARK.PublicKey.(*rsa.PublicKey).Equal(ca.arkKey.Public()) {
			return nil, errors.New("the ARK key has the wrong type or does not match the ARK")
		}
	}
	ca.init()
	return ca, nil
}

// serial returns a random positive 128-bit serial number.
func serial(r io.Reader) (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	b[0] &= 0x7f
	b[0] |= 0x01
	return new(big.Int).SetBytes(b), nil
}

func skid(pub crypto.PublicKey) []byte {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	h := sha256.Sum256(der)
	return h[:20]
}

// notBefore backdates certificates a little for hosts whose clocks differ.
func notBefore() time.Time { return time.Now().Add(-time.Hour).UTC().Truncate(time.Second) }

func create(r io.Reader, tmpl, parent *x509.Certificate, pub crypto.PublicKey, priv crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(r, tmpl, parent, pub, priv)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}
