package service

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultClientConns bounds the connections one client address holds open
// at once (LimitClientConns). A node behind one address that starts a few
// hundred keeps at once opens one connection each.
const DefaultClientConns = 1024

// LimitClientConns returns ln with at most max connections open at once
// from each client address (an IPv4 address, an IPv6 /64, as the rate
// limit counts them); a connection past it is closed as soon as it is
// accepted, before any TLS. The server's timeouts bound how long a
// connection lives, not how many one caller holds: without this bound,
// one caller keeping each of its connections alive with a request every
// idle timeout (GET /v1/ca, or a 429) could hold every descriptor the
// process has. Memory is bounded by the connections open. logf, if set,
// gets one line a minute at most while connections are refused.
func LimitClientConns(ln net.Listener, max int, logf func(format string, a ...any)) net.Listener {
	return &connLimiter{Listener: ln, max: max, logf: logf, open: map[netip.Prefix]int{}}
}

type connLimiter struct {
	net.Listener
	max  int
	logf func(format string, a ...any)

	mu       sync.Mutex
	open     map[netip.Prefix]int // open connections of each address; no zero entries
	refused  int                  // since the last report
	reported time.Time
}

var _ net.Listener = (*connLimiter)(nil)

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key, ok := clientKey(c.RemoteAddr().String())
		if !ok {
			return c, nil
		}
		l.mu.Lock()
		if l.open[key] >= l.max {
			l.refused++
			n := 0
			if now := time.Now(); now.Sub(l.reported) >= time.Minute {
				n, l.refused, l.reported = l.refused, 0, now
			}
			l.mu.Unlock()
			c.Close()
			if n > 0 && l.logf != nil {
				l.logf("connection limit: closed %d connections past %d open from one address (the last from %s)", n, l.max, key)
			}
			continue
		}
		l.open[key]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, key: key}, nil
	}
}

func (l *connLimiter) release(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
}

// limitedConn gives its address's slot back when closed.
type limitedConn struct {
	net.Conn
	l    *connLimiter
	key  netip.Prefix
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}
