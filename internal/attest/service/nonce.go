package service

import (
	"crypto/rand"
	"errors"
	"sync"
	"time"
)

// NonceSize is the length of a challenge nonce.
const NonceSize = 32

var (
	errNonceFull    = errors.New("too many outstanding challenges")
	errNonceUnknown = errors.New("nonce is unknown or already used")
	errNonceExpired = errors.New("nonce has expired")
)

// nonces is the bounded store of outstanding challenges. A nonce is removed
// when a request presents it, whatever the outcome, so it serves once.
// Expired nonces stay until the store needs room, so that a late request is
// told "expired" rather than "unknown".
type nonces struct {
	mu sync.Mutex
	m  map[[NonceSize]byte]time.Time // nonce → expiry
}

func newNonces() *nonces { return &nonces{m: map[[NonceSize]byte]time.Time{}} }

// issue returns a fresh nonce valid until now+life, or errNonceFull when
// max unexpired nonces are outstanding.
func (n *nonces) issue(now time.Time, life time.Duration, max int) ([NonceSize]byte, time.Time, error) {
	var v [NonceSize]byte
	rand.Read(v[:])
	exp := now.Add(life)
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.m) >= max {
		for k, e := range n.m {
			if !now.Before(e) {
				delete(n.m, k)
			}
		}
		if len(n.m) >= max {
			return v, time.Time{}, errNonceFull
		}
	}
	n.m[v] = exp
	return v, exp, nil
}

// consume removes b from the store and reports whether it was outstanding
// and unexpired at now.
func (n *nonces) consume(b []byte, now time.Time) error {
	if len(b) != NonceSize {
		return errNonceUnknown
	}
	k := [NonceSize]byte(b)
	n.mu.Lock()
	exp, ok := n.m[k]
	delete(n.m, k)
	n.mu.Unlock()
	switch {
	case !ok:
		return errNonceUnknown
	case !now.Before(exp):
		return errNonceExpired
	}
	return nil
}

func (n *nonces) len() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.m)
}
