package kbs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwe"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// TEE keys and responses. A keep's ephemeral key is an EC key (P-256 or
// P-384) or an RSA key of 2048 to 8192 bits, sent as a JWK. Responses are
// JWE in the flattened JSON serialization, content encrypted with A256GCM
// and its key wrapped for the TEE key: ECDH-ES+A256KW for EC keys (or the
// ECDH-ES variant the JWK's alg names), RSA-OAEP-256 for RSA keys (or
// RSA-OAEP when the JWK names it, as older guest components do).

// TEEKey is a parsed tee-pubkey.
type TEEKey struct {
	Public crypto.PublicKey
	Alg    jwa.KeyEncryptionAlgorithm
}

const minRSABits, maxRSABits = 2048, 8192

// PublicJWK writes the JWK of a keep's public key, with the key wrapping
// algorithm it expects responses in.
func PublicJWK(pub crypto.PublicKey) (json.RawMessage, error) {
	k, err := jwk.Import(pub)
	if err != nil {
		return nil, fmt.Errorf("tee key: %w", err)
	}
	alg := jwa.ECDH_ES_A256KW()
	if _, ok := pub.(*rsa.PublicKey); ok {
		alg = jwa.RSA_OAEP_256()
	}
	if err := k.Set(jwk.AlgorithmKey, alg); err != nil {
		return nil, err
	}
	return json.Marshal(k)
}

// ParseTEEKey parses and checks a tee-pubkey JWK (untrusted input).
func ParseTEEKey(raw []byte) (*TEEKey, error) {
	if len(raw) == 0 {
		return nil, errors.New("tee-pubkey: missing")
	}
	k, err := jwk.ParseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("tee-pubkey: %w", err)
	}
	var pub any
	if err := jwk.Export(k, &pub); err != nil {
		return nil, fmt.Errorf("tee-pubkey: %w", err)
	}
	if _, private := k.(interface{ D() ([]byte, bool) }); private {
		return nil, errors.New("tee-pubkey: a private key")
	}
	name := ""
	if a, ok := k.Algorithm(); ok {
		name = a.String()
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if p.Curve != elliptic.P256() && p.Curve != elliptic.P384() {
			return nil, fmt.Errorf("tee-pubkey: curve %s is not accepted (P-256 or P-384)", p.Curve.Params().Name)
		}
		switch name {
		case "", "ECDH-ES+A256KW":
			return &TEEKey{p, jwa.ECDH_ES_A256KW()}, nil
		case "ECDH-ES":
			return &TEEKey{p, jwa.ECDH_ES()}, nil
		case "ECDH-ES+A128KW":
			return &TEEKey{p, jwa.ECDH_ES_A128KW()}, nil
		}
	case *rsa.PublicKey:
		if n := p.N.BitLen(); n < minRSABits || n > maxRSABits {
			return nil, fmt.Errorf("tee-pubkey: RSA key of %d bits is not accepted (%d to %d)", n, minRSABits, maxRSABits)
		}
		switch name {
		case "", "RSA-OAEP-256":
			return &TEEKey{p, jwa.RSA_OAEP_256()}, nil
		case "RSA-OAEP":
			return &TEEKey{p, jwa.RSA_OAEP()}, nil
		}
	default:
		return nil, fmt.Errorf("tee-pubkey: key type %T is not accepted (EC or RSA)", pub)
	}
	return nil, fmt.Errorf("tee-pubkey: alg %q is not accepted for this key", name)
}

// Seal encrypts plaintext to k: a JWE in the flattened JSON serialization.
func Seal(k *TEEKey, plaintext []byte) ([]byte, error) {
	b, err := jwe.Encrypt(plaintext, jwe.WithKey(k.Alg, k.Public), jwe.WithContentEncryption(jwa.A256GCM()), jwe.WithJSON())
	if err != nil {
		return nil, fmt.Errorf("jwe: %w", err)
	}
	return b, nil
}

// maxJWE bounds a response that Open accepts.
const maxJWE = 1 << 20

// Open decrypts a JWE response (untrusted input) with the keep's private
// key. Only the key wrapping that PublicJWK announced for that key, and
// A256GCM content, are accepted.
func Open(priv crypto.Signer, body []byte) ([]byte, error) {
	if len(body) > maxJWE {
		return nil, fmt.Errorf("jwe: over %d bytes", maxJWE)
	}
	msg, err := jwe.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("jwe: %w", err)
	}
	want := jwa.ECDH_ES_A256KW()
	if _, ok := priv.Public().(*rsa.PublicKey); ok {
		want = jwa.RSA_OAEP_256()
	}
	rs := msg.Recipients()
	if len(rs) != 1 {
		return nil, fmt.Errorf("jwe: %d recipients (want 1)", len(rs))
	}
	h := msg.ProtectedHeaders()
	alg, ok := h.Algorithm()
	if !ok {
		if alg, ok = rs[0].Headers().Algorithm(); !ok {
			return nil, errors.New("jwe: no alg")
		}
	}
	if alg != want {
		return nil, fmt.Errorf("jwe: alg %s (want %s)", alg, want)
	}
	if enc, ok := h.ContentEncryption(); !ok || enc != jwa.A256GCM() {
		return nil, fmt.Errorf("jwe: enc is not A256GCM")
	}
	// Compressed content is refused wherever "zip" is set: a value is at
	// most 64 KiB, and the library would inflate up to 10 MiB of it.
	for _, hh := range []jwe.Headers{h, rs[0].Headers(), msg.UnprotectedHeaders()} {
		if hh == nil {
			continue
		}
		if z, ok := hh.Compression(); ok && z != jwa.NoCompress() {
			return nil, fmt.Errorf("jwe: zip %s: compressed content is not accepted", z)
		}
	}
	// The wrapped key's length is fixed by the algorithm: checked here,
	// since jwx v3.0.8 panics on an empty AES key wrap.
	wantLen := 40 // a 256-bit key, AES key-wrapped
	if rk, ok := priv.Public().(*rsa.PublicKey); ok {
		wantLen = rk.Size()
	}
	if n := len(rs[0].EncryptedKey()); n != wantLen {
		return nil, fmt.Errorf("jwe: encrypted_key of %d bytes (want %d)", n, wantLen)
	}
	pt, err := jwe.Decrypt(body, jwe.WithKey(want, priv))
	if err != nil {
		return nil, fmt.Errorf("jwe: %w", err)
	}
	return pt, nil
}
