package service

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Challenge nonces are stateless to issue: a nonce is sealed by the
// service's nonce key and carries its issue time, so issuing one stores
// nothing and no number of anonymous challenges can exhaust anything. On
// redeem the seal and the lifetime are checked, and the nonce's identity is
// recorded in the used-nonce ledger (audit.NonceLedger) until it expires, so
// it serves once. Replicas that share the key and the ledger's database act
// as one service.
//
// The nonce carries the lifetime it was issued with: it expires at the
// earlier of that and the current policy's lifetime, and the ledger keeps
// it until the first, the latest it could ever be redeemed. Without it, a
// nonce used under a short lifetime left the ledger at that expiry and,
// once the owner raised the lifetime, redeemed again.
//
//	nonce = version (1) || issued, Unix ns, big-endian (8) || lifetime, s, big-endian (4) || random (11) || seal (24)
//	seal  = HMAC-SHA-256(key, "castellan nonce v1" || the first 24 bytes)[:24]

// NonceSize is the length of a challenge nonce.
const NonceSize = 48

const (
	nonceVersion   = 2
	nonceBodySize  = 24 // version, issue time, random: the nonce's identity in the ledger
	nonceSealSize  = NonceSize - nonceBodySize
	nonceKeySize   = 32
	nonceDomain    = "castellan nonce v1"
	nonceClockSkew = 30 * time.Second // how far in the future a replica's issue time may be
)

var (
	errNonceForged  = errors.New("nonce was not issued by this service (bad length, version or seal)")
	errNonceExpired = errors.New("nonce has expired")
	errNonceFuture  = errors.New("nonce was issued in the future (clocks of the service's replicas differ?)")
)

// NonceKey seals challenge nonces. Replicas of one service share it.
type NonceKey struct{ k [nonceKeySize]byte }

// NewNonceKey returns a random key.
func NewNonceKey() *NonceKey {
	var k NonceKey
	rand.Read(k.k[:])
	return &k
}

// LoadOrCreateNonceKey reads the key in path (64 hex digits), or creates the
// file with a random key, mode 0600, if it does not exist. A key file
// readable by group or others is refused. Replicas starting at once create
// it only once (the file appears whole, by a hard link).
func LoadOrCreateNonceKey(path string) (*NonceKey, error) {
	k, err := readNonceKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	k = NewNonceKey()
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(dir, ".nonce-key-*")
	if err != nil {
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(k.k[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, os.ErrExist) { // another replica was first
			return readNonceKey(path)
		}
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	return k, nil
}

func readNonceKey(path string) (*NonceKey, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("nonce key %s: %w", path, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("nonce key %s: mode %v lets group or others read it (want 0600)", path, st.Mode().Perm())
	}
	b := make([]byte, 4*nonceKeySize)
	n, _ := f.Read(b)
	raw, err := hex.DecodeString(strings.TrimSpace(string(b[:n])))
	if err != nil || len(raw) != nonceKeySize {
		return nil, fmt.Errorf("nonce key %s: want %d hex digits", path, 2*nonceKeySize)
	}
	var k NonceKey
	copy(k.k[:], raw)
	return &k, nil
}

// seal returns a fresh nonce issued at now for life (rounded up to whole
// seconds).
func (k *NonceKey) seal(now time.Time, life time.Duration) []byte {
	n := make([]byte, nonceBodySize, NonceSize)
	n[0] = nonceVersion
	binary.BigEndian.PutUint64(n[1:9], uint64(now.UnixNano()))
	secs := (life + time.Second - 1) / time.Second
	binary.BigEndian.PutUint32(n[9:13], uint32(min(max(secs, 1), math.MaxUint32)))
	rand.Read(n[13:nonceBodySize])
	return append(n, k.mac(n)...)
}

func (k *NonceKey) mac(body []byte) []byte {
	m := hmac.New(sha256.New, k.k[:])
	m.Write([]byte(nonceDomain))
	m.Write(body)
	return m.Sum(nil)[:nonceSealSize]
}

// open checks the nonce's seal and lifetime at now (the earlier of the
// one it was issued with and life, the current one) and returns its
// identity and until when the used-nonce ledger must keep it: its expiry
// under the lifetime it was issued with, which no later policy extends.
func (k *NonceKey) open(n []byte, now time.Time, life time.Duration) (id []byte, keep time.Time, err error) {
	if len(n) != NonceSize || n[0] != nonceVersion || !hmac.Equal(k.mac(n[:nonceBodySize]), n[nonceBodySize:]) {
		return nil, time.Time{}, errNonceForged
	}
	issued := time.Unix(0, int64(binary.BigEndian.Uint64(n[1:9])))
	keep = issued.Add(time.Duration(binary.BigEndian.Uint32(n[9:13])) * time.Second)
	expires := issued.Add(life)
	if keep.Before(expires) {
		expires = keep
	}
	switch {
	case issued.After(now.Add(nonceClockSkew)):
		return nil, time.Time{}, errNonceFuture
	case !now.Before(expires):
		return nil, time.Time{}, errNonceExpired
	}
	return bytes.Clone(n[:nonceBodySize]), keep, nil
}
