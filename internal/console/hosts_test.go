package console

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestAllowedHost: which Host headers name the console, for a request that
// arrived on each kind of listen address.
func TestAllowedHost(t *testing.T) {
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	loop6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 8080}
	lan := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 8080}
	for _, c := range []struct {
		local net.Addr
		host  string
		extra []string
		want  bool
	}{
		{loop, "127.0.0.1:8080", nil, true},
		{loop, "localhost:8080", nil, true},
		{loop, "LOCALHOST:8080", nil, true},
		{loop, "127.0.0.2:8080", nil, true},
		{loop, "[::1]:8080", nil, true},
		{loop6, "[::1]:8080", nil, true},
		{loop6, "localhost:8080", nil, true},
		{loop, "127.0.0.1:8081", nil, false}, // another port
		{loop, "127.0.0.1", nil, false},      // port 80
		{loop, "evil.example:8080", nil, false},
		{loop, "localhost.evil.example:8080", nil, false},
		{loop, "evil.localhost:8080", nil, false},
		{loop, "", nil, false},
		{loop, "127.0.0.1:8080:1", nil, false},
		{loop, "127.0.0.1:99999", nil, false},
		{lan, "192.0.2.7:8080", nil, true},
		{lan, "localhost:8080", nil, false}, // not a loopback listener
		{lan, "127.0.0.1:8080", nil, false},
		{lan, "192.0.2.8:8080", nil, false},
		{lan, "try.example:8080", []string{"try.example"}, true},
		{lan, "TRY.example", []string{"try.example"}, true},
		{lan, "try.example:443", []string{"try.example:443"}, true},
		{lan, "try.example:8080", []string{"try.example:443"}, false},
		{lan, "try.example.evil.example:8080", []string{"try.example"}, false},
		{lan, "[2001:db8::1]:8080", []string{"2001:db8::1"}, true},
		{nil, "localhost:8080", nil, false}, // no local address: refuse
		{nil, "try.example", []string{"try.example"}, true},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = c.host
		if c.local != nil {
			r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, c.local))
		}
		if got := allowedHost(r, c.extra); got != c.want {
			t.Errorf("Host %q on %v with %q: %v, want %v", c.host, c.local, c.extra, got, c.want)
		}
	}
}

func TestCheckAllowedHost(t *testing.T) {
	for h, ok := range map[string]bool{
		"try.example": true, "try.example:443": true, "[::1]:80": true, "::1": true, "10.0.0.1": true,
		"": false, "a b": false, "a/b": false, "x:y": false, "x:99999": false, ":80": false,
	} {
		if err := CheckAllowedHost(h); (err == nil) != ok {
			t.Errorf("%q: %v", h, err)
		}
	}
}

// FuzzAllowedHost: whatever Host header arrives on a loopback listener with
// no names configured, it is allowed only if it names loopback (localhost
// or a loopback IP) with the listener's port.
func FuzzAllowedHost(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "localhost:8080", "[::1]:8080", "evil.example:8080", "127.0.0.1", "",
		"localhost.:8080", "127.0.0.1:08080", "[::ffff:127.0.0.1]:8080", "LOCALHOST:8080", "localhost:8080:8080", "[fe80::1%lo]:8080"} {
		f.Add(s)
	}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	f.Fuzz(func(t *testing.T, host string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = host
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, local))
		if !allowedHost(r, nil) {
			return
		}
		name, port, err := net.SplitHostPort(host)
		if err != nil {
			t.Fatalf("allowed %q, which has no port", host)
		}
		ip := net.ParseIP(name)
		if p, _ := strconv.Atoi(port); p != 8080 || !(strings.EqualFold(name, "localhost") || ip != nil && ip.IsLoopback()) {
			t.Fatalf("allowed %q", host)
		}
	})
}
