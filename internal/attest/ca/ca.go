// Package ca is the attestation service's certificate authority: its key
// and self-signed certificate (generated on first start and kept 0600 in the
// service's state directory, or given by the owner as files), and the
// issuance of short-lived keep certificates carrying keepcert claims and of
// the service's own TLS certificate.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/castellan-dev/castellan/keepcert"
)

// File names in a state directory.
const (
	CertFile = "ca.pem"
	KeyFile  = "ca-key.pem"
)

// CA signs keep certificates.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// PEM is Cert in PEM form, as served on GET /v1/ca.
	PEM []byte
}

// caLifetime is how long a generated CA certificate is valid.
const caLifetime = 10 * 365 * 24 * time.Hour

// New generates a CA with an ECDSA P-256 key, in memory.
func New(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating ca key: %w", err)
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Castellan attestation service"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("creating ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// LoadOrCreate loads the CA from dir, or generates one and stores it there
// (the key with mode 0600, the directory 0700) if dir holds neither file.
func LoadOrCreate(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	_, errC := os.Stat(certPath)
	_, errK := os.Stat(keyPath)
	switch {
	case errC == nil && errK == nil:
		return Load(certPath, keyPath)
	case errors.Is(errC, fs.ErrNotExist) && errors.Is(errK, fs.ErrNotExist):
	case errC != nil && !errors.Is(errC, fs.ErrNotExist):
		return nil, fmt.Errorf("ca certificate %s: %w", certPath, errC)
	case errK != nil && !errors.Is(errK, fs.ErrNotExist):
		return nil, fmt.Errorf("ca key %s: %w", keyPath, errK)
	default:
		return nil, fmt.Errorf("state directory %s holds only one of %s and %s", dir, CertFile, KeyFile)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	c, err := New("Castellan attestation CA")
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	if err := writeExclusive(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := writeExclusive(certPath, c.PEM, 0o644); err != nil {
		return nil, err
	}
	return c, nil
}

func writeExclusive(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// Load reads a CA certificate and its PKCS#8, EC or PKCS#1 private key from
// PEM files. The key file must not be readable by group or others.
func Load(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("ca certificate: %w", err)
	}
	st, err := os.Stat(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ca key %s: mode %v lets others read it, want 0600", keyFile, st.Mode().Perm())
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("ca key: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("ca %s, %s: %w", certFile, keyFile, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("ca key %s: not a signing key", keyFile)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("ca certificate %s: %w", certFile, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca certificate %s: not a CA certificate (basic constraints or key usage)", certFile)
	}
	return &CA{Cert: cert, Key: signer, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// Leaf is what a keep certificate says.
type Leaf struct {
	PublicKey   crypto.PublicKey
	Claims      *keepcert.Claims
	DNSNames    []string
	IPAddresses []net.IP
	URIs        []*url.URL
	NotBefore   time.Time
	NotAfter    time.Time
}

// Issue signs a keep certificate for l and returns its DER and serial
// number. The certificate serves both TLS ends (a keep listens and connects
// with it).
func (c *CA) Issue(l Leaf) (der []byte, serial *big.Int, err error) {
	ext, err := keepcert.Extension(l.Claims)
	if err != nil {
		return nil, nil, err
	}
	serial = randomSerial()
	tpl := &x509.Certificate{
		SerialNumber:    serial,
		Subject:         pkix.Name{CommonName: "castellan keep " + l.Claims.WorkloadDigest},
		NotBefore:       l.NotBefore,
		NotAfter:        l.NotAfter,
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtKeyUsage:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:        l.DNSNames,
		IPAddresses:     l.IPAddresses,
		URIs:            l.URIs,
		ExtraExtensions: []pkix.Extension{ext},
	}
	der, err = x509.CreateCertificate(rand.Reader, tpl, c.Cert, l.PublicKey, c.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issuing keep certificate: %w", err)
	}
	return der, serial, nil
}

// ServerCertificate issues the service's own TLS certificate for hosts
// (names or IP addresses), valid for lifetime.
func (c *CA) ServerCertificate(hosts []string, lifetime time.Duration) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "castellan attestation service"},
		NotBefore:    now.Add(-5 * time.Minute),
		NotAfter:     now.Add(lifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tpl.IPAddresses = append(tpl.IPAddresses, ip)
		} else if h != "" {
			tpl.DNSNames = append(tpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, c.Cert, key.Public(), c.Key)
	if err != nil {
		return nil, fmt.Errorf("issuing service certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der, c.Cert.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// Pool returns a pool holding the CA certificate.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

func randomSerial() *big.Int {
	b := make([]byte, 16)
	rand.Read(b)
	b[0] &= 0x7f
	b[0] |= 0x40 // keep 16 bytes, positive
	return new(big.Int).SetBytes(b)
}
