// Package connlimit bounds the connections each client address holds open
// at once on a listener, and says which address a connection counts
// under. A server's timeouts bound how long a connection lives, not how
// many one caller holds: without such a bound, one caller keeping each of
// its connections alive with a request every idle timeout (an unlimited
// download, a refusal) could hold every descriptor the process has, and
// then nobody else can connect. The attestation service and the host
// agent's API use it; the attestation service's rate limit counts
// addresses the same way (Key).
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// DefaultPerClient bounds the connections one client address holds open
// at once. A node behind one address that starts a few hundred keeps at
// once opens one connection each.
const DefaultPerClient = 1024

// Key returns the prefix a remote address ("host:port", as
// http.Request.RemoteAddr and net.Conn.RemoteAddr give it) counts under:
// an IPv4 address, an IPv6 /64 (one host is given a /64, and counting its
// addresses apart would let it multiply its share). ok is false for an
// address that does not parse (a Unix socket).
func Key(remote string) (netip.Prefix, bool) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Prefix{}, false
	}
	a = a.Unmap().WithZone("")
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p, true
}

// Listen returns ln with at most max connections open at once from each
// client address (Key); a connection past it is closed as soon as it is
// accepted, before any TLS, so refusing costs nothing. Memory is bounded
// by the connections open. logf, if set, gets one line a minute at most
// while connections are refused.
func Listen(ln net.Listener, max int, logf func(format string, a ...any)) net.Listener {
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
		key, ok := Key(c.RemoteAddr().String())
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
