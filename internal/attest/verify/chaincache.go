package verify

import (
	"container/list"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"hash"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-sev-guest/abi"
)

// DefaultChainCacheSize is the number of verified SEV-SNP chains the
// process-wide cache keeps: one per (chip, TCB) for VCEKs, one per
// provider and TCB for VLEKs.
const DefaultChainCacheSize = 1024

// ChainCache remembers SEV-SNP endorsement chains (VCEK or VLEK, ASK or
// ASVK, ARK) that verified up to a trusted root, so that the next report
// from the same chip and TCB costs one ECDSA check instead of the RSA-PSS
// chain as well. An entry is found only by the exact DER bytes of the
// endorsements together with the signer kind, the report's product line
// and every root the caller trusts (its simulation roots and its AMD
// roots): a chain verified under roots a caller does not trust is never a
// hit for that caller. An entry is used only within the validity of the
// certificates it was verified with (the VCEK and the root pair it chained
// to); outside it, the chain is verified again, and refused if expired.
// The report's signature and what binds the VCEK to the report (TCB, chip
// ID) are checked on every report; so is the report data (Envelope).
//
// The cache holds at most its size in entries and drops the least recently
// used. It is safe for concurrent use.
type ChainCache struct {
	mu      sync.Mutex
	max     int
	entries map[chainKey]*list.Element // values *cacheEntry
	lru     list.List                  // front: most recently used
	hits    atomic.Uint64
}

type chainKey [sha256.Size]byte

type cacheEntry struct {
	key   chainKey
	chain *snpChain
}

// NewChainCache returns a cache of at most size chains; size 0 or less
// caches nothing.
func NewChainCache(size int) *ChainCache {
	return &ChainCache{max: size, entries: map[chainKey]*list.Element{}}
}

var defaultChainCache = NewChainCache(DefaultChainCacheSize)

func (o *Options) chainCache() *ChainCache {
	if o.ChainCache != nil {
		return o.ChainCache
	}
	return defaultChainCache
}

// Len is the number of chains held.
func (c *ChainCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Hits is the number of reports whose chain was found in the cache.
func (c *ChainCache) Hits() uint64 { return c.hits.Load() }

// get returns the chain cached under k if it is valid at now. An entry
// outside its validity is removed.
func (c *ChainCache) get(k chainKey, now time.Time) *snpChain {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return nil
	}
	ch := e.Value.(*cacheEntry).chain
	if now.Before(ch.notBefore) || now.After(ch.notAfter) {
		c.lru.Remove(e)
		delete(c.entries, k)
		return nil
	}
	c.lru.MoveToFront(e)
	c.hits.Add(1)
	return ch
}

func (c *ChainCache) put(k chainKey, ch *snpChain) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k]; ok {
		e.Value.(*cacheEntry).chain = ch
		c.lru.MoveToFront(e)
		return
	}
	c.entries[k] = c.lru.PushFront(&cacheEntry{key: k, chain: ch})
	for c.lru.Len() > c.max {
		last := c.lru.Back()
		c.lru.Remove(last)
		delete(c.entries, last.Value.(*cacheEntry).key)
	}
}

// snpChainKey identifies a chain verification: the endorsements' exact
// bytes, the kind of signing key, the product line the report names (which
// selects the roots), and the identity of every root the caller trusts.
// Each field is length-prefixed, so no two inputs share an encoding.
func snpChainKey(ders [][]byte, key abi.ReportSigner, productLine string, opts *Options) chainKey {
	h := sha256.New()
	field(h, []byte("castellan SEV-SNP chain v1"))
	field(h, []byte{byte(key)})
	field(h, []byte(productLine))
	count(h, len(ders))
	for _, d := range ders {
		field(h, d)
	}
	count(h, len(opts.SimRoots))
	for _, r := range opts.SimRoots {
		field(h, r.Raw)
	}
	if opts.AMDRoots == nil {
		field(h, []byte("AMD roots embedded in go-sev-guest"))
	} else {
		lines := make([]string, 0, len(opts.AMDRoots))
		for l := range opts.AMDRoots {
			lines = append(lines, l)
		}
		sort.Strings(lines)
		field(h, []byte("AMD roots given"))
		count(h, len(lines))
		for _, l := range lines {
			field(h, []byte(l))
			count(h, len(opts.AMDRoots[l]))
			for _, r := range opts.AMDRoots[l] {
				if r == nil || r.ProductCerts == nil {
					field(h, nil)
					continue
				}
				for _, c := range []*x509.Certificate{r.ProductCerts.Ark, r.ProductCerts.Ask, r.ProductCerts.Asvk} {
					if c == nil {
						field(h, nil)
					} else {
						field(h, c.Raw)
					}
				}
			}
		}
	}
	var k chainKey
	h.Sum(k[:0])
	return k
}

func field(h hash.Hash, b []byte) {
	count(h, len(b))
	h.Write(b)
}

func count(h hash.Hash, n int) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}
