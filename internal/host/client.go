package host

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to a host agent's API.
type Client struct {
	base  *url.URL
	token string
	tls   *tls.Config
	hc    *http.Client
}

// APIError is an answer other than success from the agent.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("host agent: %s (HTTP %d)", e.Message, e.Status)
}

// NewClient returns a client for the agent at baseURL (https://host:port).
// roots are trusted for the agent's TLS certificate (its self-signed
// certificate, from --host-ca); nil means the system roots.
func NewClient(baseURL, token string, roots *x509.CertPool) (*Client, error) {
	u, err := url.Parse(strings.TrimSuffix(baseURL, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("host agent %q: want an https://host:port URL", baseURL)
	}
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}}
	return &Client{base: u, token: token, tls: tc, hc: &http.Client{
		Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 64},
	}}, nil
}

// CloseIdleConnections releases the client's pooled connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("host agent: %w", err)
	}
	defer resp.Body.Close()
	return decodeAnswer(resp, out)
}

func decodeAnswer(resp *http.Response, out any) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("host agent: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e ErrorResponse
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = truncate(strings.TrimSpace(string(b)))
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("host agent answer: %w", err)
		}
	}
	return nil
}

// Host returns the host's information.
func (c *Client) Host(ctx context.Context) (*HostInfo, error) {
	var h HostInfo
	return &h, c.do(ctx, http.MethodGet, "/v1/host", nil, &h)
}

// Create asks for a keep; the answer carries its hello.
func (c *Client) Create(ctx context.Context, req *CreateRequest) (*Keep, error) {
	var k Keep
	return &k, c.do(ctx, http.MethodPost, "/v1/keeps", req, &k)
}

// List returns every keep the agent knows.
func (c *Client) List(ctx context.Context) ([]Keep, error) {
	var out struct {
		Keeps []Keep `json:"keeps"`
	}
	return out.Keeps, c.do(ctx, http.MethodGet, "/v1/keeps", nil, &out)
}

// Get returns one keep.
func (c *Client) Get(ctx context.Context, id string) (*Keep, error) {
	var k Keep
	return &k, c.do(ctx, http.MethodGet, "/v1/keeps/"+url.PathEscape(id), nil, &k)
}

// Stop stops a keep and returns its final record.
func (c *Client) Stop(ctx context.Context, id string) (*Keep, error) {
	var k Keep
	return &k, c.do(ctx, http.MethodPost, "/v1/keeps/"+url.PathEscape(id)+"/stop", nil, &k)
}

// Events calls fn for each event of a keep; with follow it waits for new
// ones until the keep ended or ctx is done.
func (c *Client) Events(ctx context.Context, id string, follow bool, fn func(Event)) error {
	path := "/v1/keeps/" + url.PathEscape(id) + "/events"
	if follow {
		path += "?follow=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("host agent: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return decodeAnswer(resp, nil)
	}
	// The agent may be hostile: one event is read a line at a time, at
	// most maxEventLine bytes, never a stream without end.
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 4096), maxEventLine)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return fmt.Errorf("host agent events: %w", err)
		}
		fn(e)
	}
	if errors.Is(sc.Err(), bufio.ErrTooLong) {
		return fmt.Errorf("host agent events: an event of more than %d bytes", maxEventLine)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("host agent events: %w", err)
	}
	return nil
}

// maxEventLine bounds one event line of the agent's stream: its message
// is at most keep.MaxLogLine bytes, six times that if JSON escapes each.
const maxEventLine = 64 << 10

// Attach opens the relay to a ready keep: the returned connection carries
// raw bytes to and from the keep (the client then runs TLS to the keep
// over it, see delivery.Session.Deliver).
func (c *Client) Attach(ctx context.Context, id string) (net.Conn, error) {
	host := c.base.Host
	if c.base.Port() == "" {
		host = net.JoinHostPort(c.base.Hostname(), "443")
	}
	d := &tls.Dialer{Config: c.tls.Clone()}
	d.Config.ServerName = c.base.Hostname()
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("host agent: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	path := c.base.Path + "/v1/keeps/" + url.PathEscape(id) + "/attach"
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\nContent-Length: 0\r\n\r\n",
		path, c.base.Host, c.token, RelayProtocol)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("host agent attach: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, decodeAnswer(resp, nil)
	}
	return &bufConn{Conn: conn, r: br}, nil
}

// bufConn is a connection whose first bytes may sit in a bufio.Reader.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Remove deletes a finished keep (its folder, record and events); with
// stop, a keep that still runs is stopped first, else it is refused (409).
func (c *Client) Remove(ctx context.Context, id string, stop bool) error {
	path := "/v1/keeps/" + url.PathEscape(id)
	if stop {
		path += "?stop=1"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}
