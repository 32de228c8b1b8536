// Package loadgen is a lean HTTP/1.1 keep-alive load generator for the
// benchmarks: N raw TCP (or TLS) connections, each sending one GET at a
// time (no pipelining) and reading the response with a minimal parser, for
// a fixed duration or a fixed number of requests. It measures a server,
// not itself: net/http's client spends more CPU per request than a small
// server does, and capped the native baseline near 21k requests/s on two
// cores.
package loadgen

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options says what to load and for how long.
type Options struct {
	Addr  string // host:port
	TLS   bool   // speak TLS (the server's certificate is not verified)
	Path  string // request path; "/" if empty
	Conns int    // concurrent connections; 1 if zero
	// Duration bounds the run; Requests, if non-zero, ends it after that
	// many responses in all. At least one of them must be set.
	Duration time.Duration
	Requests int
}

// Result is what a run measured.
type Result struct {
	Requests int           // responses with status 200
	Errors   int           // failed requests (status not 200, broken connections)
	Elapsed  time.Duration // from the first request to the last response
	P50, P99 time.Duration // request latency percentiles
	// Bodies holds up to 16 distinct response bodies seen, for callers
	// that check which instance answered.
	Bodies []string
}

// Rate returns the responses per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// Wait dials addr until it accepts a connection, for at most limit.
func Wait(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s never accepted a connection: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Run loads the server and returns what it measured. Connections are
// opened (and TLS handshakes done) before the clock starts.
func Run(o Options) (Result, error) {
	if o.Conns <= 0 {
		o.Conns = 1
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.Duration <= 0 && o.Requests <= 0 {
		return Result{}, errors.New("loadgen: neither a duration nor a request count")
	}
	req := []byte("GET " + o.Path + " HTTP/1.1\r\nHost: " + o.Addr + "\r\nUser-Agent: castellan-loadgen\r\n\r\n")
	conns := make([]net.Conn, 0, o.Conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range o.Conns {
		c, err := dial(o)
		if err != nil {
			return Result{}, err
		}
		conns = append(conns, c)
	}
	var budget atomic.Int64
	budget.Store(int64(o.Requests))
	stop := time.Now().Add(o.Duration)
	type part struct {
		lat    []time.Duration
		ok     int
		errs   int
		bodies map[string]bool
	}
	parts := make([]part, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	if o.Duration > 0 {
		stop = start.Add(o.Duration)
	}
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &parts[i]
			p.lat = make([]time.Duration, 0, 4096)
			p.bodies = map[string]bool{}
			r := bufio.NewReaderSize(c, 16<<10)
			for {
				if o.Requests > 0 && budget.Add(-1) < 0 {
					return
				}
				t0 := time.Now()
				if o.Duration > 0 && !t0.Before(stop) {
					return
				}
				if _, err := c.Write(req); err != nil {
					p.errs++
					return
				}
				status, body, err := readResponse(r)
				if err != nil {
					p.errs++
					return
				}
				p.lat = append(p.lat, time.Since(t0))
				if status != 200 {
					p.errs++
				} else {
					p.ok++
				}
				if len(p.bodies) < 16 && !p.bodies[string(body)] {
					p.bodies[string(body)] = true
				}
			}
		}()
	}
	wg.Wait()
	res := Result{Elapsed: time.Since(start)}
	var all []time.Duration
	seen := map[string]bool{}
	for _, p := range parts {
		all = append(all, p.lat...)
		res.Errors += p.errs
		res.Requests += p.ok
		for b := range p.bodies {
			if !seen[b] && len(res.Bodies) < 16 {
				seen[b] = true
				res.Bodies = append(res.Bodies, b)
			}
		}
	}
	slices.Sort(all)
	if len(all) > 0 {
		res.P50 = all[len(all)/2]
		res.P99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return res, nil
}

func dial(o Options) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", o.Addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	if !o.TLS {
		return c, nil
	}
	// The servers measured use fresh self-signed certificates: this
	// measures throughput, not trust.
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", o.Addr, err)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}

// maxBody bounds the response bodies read; the benchmark's are tiny.
const maxBody = 1 << 20

// readResponse reads one HTTP/1.1 response with a Content-Length or a
// chunked body and returns its status and body. The body slice is valid
// until the next call.
func readResponse(r *bufio.Reader) (status int, body []byte, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, nil, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, nil, fmt.Errorf("bad status line %q", line)
	}
	length, chunked := -1, false
	for {
		line, err = r.ReadSlice('\n')
		if err != nil {
			return 0, nil, err
		}
		h := bytes.TrimRight(line, "\r\n")
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, nil, fmt.Errorf("bad header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			length, err = strconv.Atoi(string(value))
			if err != nil || length < 0 || length > maxBody {
				return 0, nil, fmt.Errorf("bad content length %q", value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")) && bytes.EqualFold(value, []byte("chunked")):
			chunked = true
		}
	}
	switch {
	case chunked:
		body, err = readChunked(r)
	case length >= 0:
		body = make([]byte, length)
		_, err = io.ReadFull(r, body)
	default:
		return 0, nil, errors.New("response without a length on a keep-alive connection")
	}
	return status, body, err
}

func readChunked(r *bufio.Reader) ([]byte, error) {
	var body []byte
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return nil, err
		}
		size, _, _ := bytes.Cut(bytes.TrimRight(line, "\r\n"), []byte(";"))
		n, err := strconv.ParseUint(string(size), 16, 32)
		if err != nil || len(body)+int(n) > maxBody {
			return nil, fmt.Errorf("bad chunk size %q", line)
		}
		if n == 0 {
			// Trailers, then the empty line.
			for {
				line, err := r.ReadSlice('\n')
				if err != nil {
					return nil, err
				}
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					return body, nil
				}
			}
		}
		start := len(body)
		body = append(body, make([]byte, n+2)...)
		if _, err := io.ReadFull(r, body[start:]); err != nil {
			return nil, err
		}
		if string(body[len(body)-2:]) != "\r\n" {
			return nil, errors.New("chunk not followed by CRLF")
		}
		body = body[:len(body)-2]
	}
}
