package service

import (
	"log"
	"strings"
	"sync"
	"time"
)

// ProbeLogInterval is how often, at most, ErrorLog reports connections
// closed before their TLS handshake completed.
const ProbeLogInterval = time.Minute

// ErrorLog returns a logger for http.Server.ErrorLog that sends the HTTP
// server's messages through the service's logging instead of Go's default
// logger on stderr. Connections that close before or during the TLS
// handshake without a TLS error (Go logs "http: TLS handshake error from
// ADDR: EOF" for them: port probes, load-balancer health checks, a client
// giving up) are reported to infof as one short line at most every
// ProbeLogInterval, with the number of them since the last line. Every
// other message goes to warnf: failed handshakes as one line naming the
// peer and the TLS error, the rest (accept errors, panics in handlers)
// whole.
func ErrorLog(warnf, infof func(format string, a ...any)) *log.Logger {
	return log.New(&errorLogWriter{warnf: warnf, infof: infof, now: time.Now}, "", 0)
}

type errorLogWriter struct {
	warnf, infof func(format string, a ...any)
	now          func() time.Time

	mu         sync.Mutex
	lastProbe  time.Time // when a probe line was last written
	suppressed int       // probes since then not reported
}

const handshakePrefix = "http: TLS handshake error from "

func (w *errorLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	rest, ok := strings.CutPrefix(msg, handshakePrefix)
	if !ok {
		w.warnf("%s", strings.TrimPrefix(msg, "http: "))
		return len(p), nil
	}
	// ADDR never contains ": " (host:port or [v6]:port); the reason may.
	addr, reason, ok := strings.Cut(rest, ": ")
	if !ok {
		w.warnf("%s", strings.TrimPrefix(msg, "http: "))
		return len(p), nil
	}
	if !isProbe(reason) {
		w.warnf("TLS handshake with %s failed: %s", addr, clip(strings.Join(strings.Fields(reason), " ")))
		return len(p), nil
	}
	w.mu.Lock()
	now := w.now()
	if !w.lastProbe.IsZero() && now.Sub(w.lastProbe) < ProbeLogInterval {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	more, since := w.suppressed, w.lastProbe
	w.lastProbe, w.suppressed = now, 0
	w.mu.Unlock()
	if more > 0 {
		w.infof("connection from %s closed before the TLS handshake (port probe?; %d more since %s)", addr, more, since.UTC().Format(time.TimeOnly))
	} else {
		w.infof("connection from %s closed before the TLS handshake (port probe?)", addr)
	}
	return len(p), nil
}

// isProbe reports whether a handshake failed only because the peer went
// away (end of stream, reset, broken pipe), not because of a TLS error.
func isProbe(reason string) bool {
	return reason == "EOF" || reason == "unexpected EOF" ||
		strings.HasSuffix(reason, "connection reset by peer") ||
		strings.HasSuffix(reason, "broken pipe")
}
