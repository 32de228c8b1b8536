package kbs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/castellan-dev/castellan/internal/retryhttp"
)

// EvidenceFunc has the keep's TEE sign reportData and returns the
// primary evidence to send: MarshalEvidence makes Castellan's form (for a
// Castellan service), MarshalTrusteeEvidence the form of guest-components'
// attester (for a Trustee KBS, whose verifier reads no other).
type EvidenceFunc func(ctx context.Context, reportData [64]byte) (json.RawMessage, error)

// Client fetches resources from a KBS (a Castellan attestation service or
// a Trustee KBS) for one keep. It makes a fresh P-256 key, attests once
// (auth, then attest with the key and the challenge bound into the
// evidence) and reuses the session for every resource.
type Client struct {
	URL      string       // the service's base URL, https://host:port
	HTTP     *http.Client // carries the TLS roots; nil = http.DefaultClient
	TEE      string       // the Request's tee: "snp", "tdx", "sgx", "cca"
	Evidence EvidenceFunc
	// WorkloadDigest, when set, is bound in the runtime data as
	// castellan-workload (a Castellan service releases secrets by it).
	// Leave it empty for a Trustee KBS.
	WorkloadDigest string

	key     *ecdsa.PrivateKey
	session string
	token   string
}

// RefusedError is a KBS refusal.
type RefusedError struct {
	Status int
	Info   ErrorInformation
}

func (e *RefusedError) Error() string {
	t := strings.TrimPrefix(e.Info.Type, ErrorType)
	if t == "" {
		t = http.StatusText(e.Status)
	}
	return fmt.Sprintf("kbs refused (%s): %s", t, e.Info.Detail)
}

// maxBody bounds what the client reads.
const maxBody = 1 << 20

// maxRefusalText bounds the type and the detail of a refusal kept in a
// RefusedError.
const maxRefusalText = 200

// cutText cuts s to maxRefusalText bytes on a UTF-8 boundary.
func cutText(s string) string {
	if len(s) <= maxRefusalText {
		return s
	}
	n := maxRefusalText
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func (c *Client) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var data []byte
	if body != nil {
		var err error
		if data, err = json.Marshal(body); err != nil {
			return nil, err
		}
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	// A busy service's answer (429, 503 with Retry-After) is waited out
	// within ctx.
	resp, err := retryhttp.Do(ctx, hc, func() (*http.Request, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(data)
		}
		req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.URL, "/")+path, rd)
		if err != nil {
			return nil, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.session != "" {
			req.AddCookie(&http.Cookie{Name: CookieName, Value: c.session})
		}
		return req, nil
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("%s: answer over %d bytes", path, maxBody)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == CookieName {
			c.session = ck.Value
		}
	}
	if resp.StatusCode != http.StatusOK {
		e := &RefusedError{Status: resp.StatusCode}
		if json.Unmarshal(b, &e.Info) != nil || e.Info.Detail == "" {
			e.Info.Detail = strings.TrimSpace(string(b[:min(len(b), 200)]))
		}
		// The service's words go into errors that the keep sends on and
		// logs: at most maxRefusalText bytes of each.
		e.Info.Type, e.Info.Detail = cutText(e.Info.Type), cutText(e.Info.Detail)
		return nil, e
	}
	return b, nil
}

// Attest runs auth and attest with a fresh key; on success the session
// cookie authorises resource requests and Token holds the attestation
// token.
func (c *Client) Attest(ctx context.Context) error {
	if _, err := Platform(c.TEE); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	c.session, c.token = "", ""
	b, err := c.do(ctx, http.MethodPost, PathAuth, Request{Version: ProtocolVersion, TEE: c.TEE, ExtraParams: json.RawMessage(`{}`)})
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	var ch Challenge
	if err := json.Unmarshal(b, &ch); err != nil || ch.Nonce == "" {
		return fmt.Errorf("auth: not a challenge: %s", strings.TrimSpace(string(b[:min(len(b), 200)])))
	}
	hashName := HashSHA384
	if v, ok := ch.ExtraParams[SelectedHashKey].(string); ok {
		hashName = v
	}
	jwk, err := PublicJWK(key.Public())
	if err != nil {
		return err
	}
	rt, err := json.Marshal(RuntimeData{Nonce: ch.Nonce, TEEPubKey: jwk, WorkloadDigest: c.WorkloadDigest})
	if err != nil {
		return err
	}
	if rt, err = Canonical(rt); err != nil {
		return err
	}
	// The evidence goes in the composite form with no additional
	// evidence, as guest-components sends it: a Trustee KBS of protocol
	// 0.4 takes no other, and binds the runtime data with
	// "additional-evidence" added (a Castellan service accepts both).
	noAdditional := ""
	bound, err := BoundRuntimeData(rt, &Evidence{Additional: &noAdditional})
	if err != nil {
		return err
	}
	rd, err := ReportData(hashName, bound[len(bound)-1])
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	ev, err := c.Evidence(ctx, rd)
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	ev, err = json.Marshal(composite{Primary: ev, Additional: &noAdditional})
	if err != nil {
		return fmt.Errorf("evidence: %w", err)
	}
	b, err = c.do(ctx, http.MethodPost, PathAttest, Attestation{RuntimeData: rt, TEEEvidence: ev})
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	var ar AttestResponse
	if err := json.Unmarshal(b, &ar); err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	c.key, c.token = key, ar.Token
	return nil
}

// Token is the attestation token of the last Attest.
func (c *Client) Token() string { return c.token }

// Resource fetches and decrypts one resource, attesting first if the
// client has no session.
func (c *Client) Resource(ctx context.Context, r Ref) ([]byte, error) {
	if c.key == nil {
		if err := c.Attest(ctx); err != nil {
			return nil, err
		}
	}
	b, err := c.do(ctx, http.MethodGet, PathResource+r.Path(), nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	v, err := Open(c.key, b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r, err)
	}
	return v, nil
}
