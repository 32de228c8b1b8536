package service

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/connlimit"
)

// Defaults of the per-client rate limit (Config.ClientRate, ClientBurst).
// A keep attests with two requests (challenge, certificate) or, over the
// KBS protocol, two and one a secret; a node that starts a few dozen keeps
// at once from one address stays within the burst.
const (
	DefaultClientRate  = 20  // requests a second, per client address
	DefaultClientBurst = 100 // requests at once, per client address
	// maxClients bounds the addresses remembered: two generations of at
	// most maxClients each.
	maxClients = 1 << 16
	// clientIdle is how long an address is remembered after its last
	// request at the least: a generation lives this long, unless it fills.
	clientIdle = time.Minute
)

// clientLimiter is a token bucket per client address (IPv4 /32, IPv6 /64:
// one host is given a /64, and counting its addresses apart would let it
// multiply its share). Memory is bounded: buckets live in two generations
// of at most maxClients, the older dropped when the newer fills or ages;
// an address found in the older moves to the newer. An attacker with more
// addresses than that only resets other addresses' buckets to full, and
// the in-flight bound still caps the work.
type clientLimiter struct {
	rate  float64 // tokens a second
	burst float64

	mu        sync.Mutex
	cur, prev map[netip.Prefix]*bucket
	born      time.Time // when cur was made
	// refusals since the last report, for the operator's log
	refused   int
	refusedBy map[netip.Prefix]int
	reported  time.Time
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newClientLimiter(rate float64, burst int, now time.Time) *clientLimiter {
	return &clientLimiter{rate: rate, burst: float64(burst), cur: map[netip.Prefix]*bucket{}, born: now, reported: now}
}

// clientKey returns the prefix a request's remote address counts under
// (connlimit.Key: an IPv4 address, an IPv6 /64); ok is false for an
// address that does not parse (a Unix socket), which is not limited.
func clientKey(remote string) (netip.Prefix, bool) { return connlimit.Key(remote) }

// allow takes a token for key at now, or says how long until one is there.
func (l *clientLimiter) allow(key netip.Prefix, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.cur) >= maxClients || now.Sub(l.born) >= clientIdle {
		l.prev, l.cur, l.born = l.cur, make(map[netip.Prefix]*bucket, len(l.cur)), now
	}
	b := l.cur[key]
	if b == nil {
		if b = l.prev[key]; b != nil {
			delete(l.prev, key)
		} else {
			b = &bucket{tokens: l.burst, at: now}
		}
		l.cur[key] = b
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = math.Min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	l.refused++
	if l.refusedBy == nil {
		l.refusedBy = map[netip.Prefix]int{}
	}
	if len(l.refusedBy) < 1024 {
		l.refusedBy[key]++
	}
	return false, time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
}

// report returns a line for the operator's log when requests were refused
// and the last report is a minute old, else "".
func (l *clientLimiter) report(now time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refused == 0 || now.Sub(l.reported) < time.Minute {
		return ""
	}
	var top netip.Prefix
	for k, n := range l.refusedBy {
		if n > l.refusedBy[top] {
			top = k
		}
	}
	from := fmt.Sprint(len(l.refusedBy))
	if len(l.refusedBy) >= 1024 {
		from += " or more"
	}
	line := fmt.Sprintf("rate limit: refused %d requests from %s addresses since %s (most from %s: %d)",
		l.refused, from, l.reported.UTC().Format(time.RFC3339), top, l.refusedBy[top])
	l.refused, l.refusedBy, l.reported = 0, nil, now
	return line
}

// admit applies the per-client rate limit: false means r was answered 429.
func (s *Service) admit(w http.ResponseWriter, r *http.Request) bool {
	key, ok := clientKey(r.RemoteAddr)
	if !ok {
		return true
	}
	now := s.cfg.Now()
	allowed, wait := s.limiter.allow(key, now)
	if allowed {
		return true
	}
	if line := s.limiter.report(now); line != "" {
		s.cfg.Logf("%s", line)
	}
	secs := int(math.Ceil(wait.Seconds()))
	w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
	msg := fmt.Sprintf("too many requests from %s: at most %g a second, bursts of %d; retry after %ds",
		key, s.cfg.ClientRate, s.cfg.ClientBurst, max(secs, 1))
	if strings.HasPrefix(r.URL.Path, "/kbs/") {
		kbsError(w, http.StatusTooManyRequests, "TooManyRequests", msg)
	} else {
		writeJSON(w, http.StatusTooManyRequests, ErrorResponse{Error: msg, Check: CheckRate})
	}
	return false
}
