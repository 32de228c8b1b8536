package collateral

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Limit passes at most Burst fetches at once, refilled at PerMinute, to
// its source, and refuses the others at once. A service puts it between
// its cache and the network: a missing VCEK is fetched before the report's
// signature can be checked (the VCEK is what checks it), so whoever holds
// a nonce could otherwise make the service query AMD's rate-limited key
// server for any number of invented chips. Keeps on real hardware send
// their VCEK with the report, and the cache answers repeats, so a genuine
// deployment seldom reaches the limit.
type Limit struct {
	Source    Source
	PerMinute int // 0 means 30
	Burst     int // 0 means PerMinute
	// Now is the clock; nil: time.Now.
	Now func() time.Time

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

var _ Source = (*Limit)(nil)

// Get fetches url from the source if the budget allows.
func (l *Limit) Get(ctx context.Context, url string) (*Response, error) {
	per := l.PerMinute
	if per <= 0 {
		per = 30
	}
	burst := l.Burst
	if burst <= 0 {
		burst = per
	}
	now := time.Now()
	if l.Now != nil {
		now = l.Now()
	}
	l.mu.Lock()
	if l.last.IsZero() {
		l.tokens = float64(burst)
	} else {
		l.tokens = min(float64(burst), l.tokens+now.Sub(l.last).Minutes()*float64(per))
	}
	l.last = now
	ok := l.tokens >= 1
	if ok {
		l.tokens--
	}
	l.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s: not fetched: more than %d collateral fetches a minute (the limit that protects the vendor's rate-limited server)", url, per)
	}
	return l.Source.Get(ctx, url)
}
