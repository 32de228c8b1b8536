package console

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// allowedHost reports whether r's Host header names this console, the
// defence against DNS rebinding: a page on evil.example whose name is made
// to resolve to the console's address is same-origin with itself, so the
// Origin and Sec-Fetch-Site checks pass, but its requests still carry
// "Host: evil.example". A Host is allowed when it is
//   - the address the request arrived on (the console's listen address,
//     or the interface's address for a wildcard listener), as an IP
//     literal with the same port;
//   - for a request that arrived on a loopback address, "localhost" or any
//     loopback IP literal, with the same port;
//   - one of extra: "NAME" (any port) or "NAME:PORT" (that port only),
//     compared without regard to case.
//
// A Host without a port means port 80, as the console serves plain HTTP.
func allowedHost(r *http.Request, extra []string) bool {
	name, port, _, ok := splitHost(r.Host)
	if !ok {
		return false
	}
	for _, a := range extra {
		an, ap, hasPort, ok := splitHost(a)
		if ok && an == name && (!hasPort || ap == port) {
			return true
		}
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	tcp, _ := local.(*net.TCPAddr)
	if tcp == nil || port != strconv.Itoa(tcp.Port) {
		return false
	}
	ip := net.ParseIP(name)
	if ip != nil && ip.Equal(tcp.IP) {
		return true
	}
	return tcp.IP.IsLoopback() && (name == "localhost" || ip != nil && ip.IsLoopback())
}

// splitHost splits a Host header (or an --allowed-host value) into its
// lowercased name, without the brackets of an IPv6 literal, and its port
// ("80" when it has none).
func splitHost(h string) (name, port string, hasPort, ok bool) {
	if h == "" {
		return "", "", false, false
	}
	if n, p, err := net.SplitHostPort(h); err == nil {
		if _, err := strconv.ParseUint(p, 10, 16); err != nil || n == "" {
			return "", "", false, false
		}
		return strings.ToLower(n), p, true, true
	}
	n := strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	if n == "" || strings.ContainsAny(n, "/ ") || (strings.Contains(n, ":") && net.ParseIP(n) == nil) {
		return "", "", false, false
	}
	return strings.ToLower(n), "80", false, true
}

// CheckAllowedHost checks one --allowed-host value.
func CheckAllowedHost(h string) error {
	if _, _, _, ok := splitHost(h); !ok {
		return fmt.Errorf("%q is not a host name, an IP address or NAME:PORT", h)
	}
	return nil
}
