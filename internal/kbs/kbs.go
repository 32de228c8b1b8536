// Package kbs speaks the Key Broker Service protocol of Confidential
// Containers' Trustee (kbs/docs/kbs_attestation_protocol.md), on both
// sides: the attestation service serves it (internal/attest/service), and a
// keep uses Client to fetch the secrets its config names by kbs:///
// reference, from a Castellan service or from a Trustee KBS alike.
//
// The exchange is Request-Challenge-Attestation-Response over HTTPS:
//
//	POST /kbs/v0/auth                        Request{version, tee, extra-params}
//	                                         → Challenge{nonce, extra-params}, cookie kbs-session-id
//	POST /kbs/v0/attest                      Attestation{runtime-data{nonce, tee-pubkey}, tee-evidence{primary_evidence, additional_evidence}}
//	                                         → {"token": JWT}, cookie kbs-session-id
//	GET  /kbs/v0/resource/<repo>/<type>/<tag> → the value as a JWE (flattened JSON) to tee-pubkey
//
// The hardware report data binds the runtime data: the selected hash
// (SHA-384 unless the challenge selects another) of its canonical JSON
// (RFC 8785), zero-padded to 64 bytes. This package holds the payloads,
// the canonical form and that hash, the evidence forms carried in
// tee-evidence (evidence.go; snp.go maps guest-components' SEV-SNP JSON to
// and from the binary report), the JWE of responses (jwe.go) and the
// client (client.go); it decides nothing about trust.
package kbs

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

// ProtocolVersion is the KBS protocol version the client sends: Trustee's
// KBS accepts exactly its own (0.4.0 since Trustee v0.14), and the
// Castellan service any 0.x.
const ProtocolVersion = "0.4.0"

// CookieName is the session cookie.
const CookieName = "kbs-session-id"

// Paths of the endpoints, below the service's base URL.
const (
	PathAuth     = "/kbs/v0/auth"
	PathAttest   = "/kbs/v0/attest"
	PathResource = "/kbs/v0/resource/"
)

// Request is the first message (POST /kbs/v0/auth).
type Request struct {
	Version     string          `json:"version"`
	TEE         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params,omitempty"`
}

// Challenge is the answer to a Request.
type Challenge struct {
	Nonce       string         `json:"nonce"`
	ExtraParams map[string]any `json:"extra-params"`
}

// SelectedHashKey is the Challenge extra parameter that names the hash of
// the runtime data.
const SelectedHashKey = "selected-hash-algorithm"

// Attestation is the second message (POST /kbs/v0/attest). RuntimeData is
// kept as sent: its canonical form is what the report data binds.
type Attestation struct {
	InitData    json.RawMessage `json:"init-data,omitempty"`
	RuntimeData json.RawMessage `json:"runtime-data"`
	TEEEvidence json.RawMessage `json:"tee-evidence"`
}

// RuntimeData is what the hardware report binds. WorkloadDigest is
// Castellan's addition: a keep talking to a Castellan service binds the
// digest of the workload it loaded, so that secrets can be bound to it; a
// Trustee KBS does not know the field, so a keep leaves it out there.
type RuntimeData struct {
	Nonce          string          `json:"nonce"`
	TEEPubKey      json.RawMessage `json:"tee-pubkey"`
	WorkloadDigest string          `json:"castellan-workload,omitempty"`
}

// AttestResponse is the answer to a successful Attestation.
type AttestResponse struct {
	Token string `json:"token"`
}

// ErrorInformation is the body of a refusal.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// ErrorType prefixes the type URIs of ErrorInformation.
const ErrorType = "https://github.com/confidential-containers/kbs/errors/"

// Ref is a resource reference, kbs:///repo/type/tag (an optional host
// between the slashes is allowed and ignored: the keep fetches from the
// service it is configured with).
type Ref struct{ Repo, Type, Tag string }

var refPart = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// ParseRef parses "kbs:///repo/type/tag" or "kbs://host/repo/type/tag".
func ParseRef(s string) (Ref, error) {
	rest, ok := strings.CutPrefix(s, "kbs://")
	if !ok {
		return Ref{}, fmt.Errorf("%q is not a kbs:// reference", s)
	}
	_, path, ok := strings.Cut(rest, "/")
	if !ok {
		return Ref{}, fmt.Errorf("%q has no resource path (want kbs:///repo/type/tag)", s)
	}
	return ParsePath(path)
}

// ParsePath parses a resource path "repo/type/tag". Each part is 1 to 128
// letters, digits, '_', '.' or '-', and not "." or "..".
func ParsePath(p string) (Ref, error) {
	parts := strings.Split(p, "/")
	if len(parts) != 3 {
		return Ref{}, fmt.Errorf("resource path %q does not have three parts (repo/type/tag)", p)
	}
	for _, x := range parts {
		if !refPart.MatchString(x) || x == "." || x == ".." {
			return Ref{}, fmt.Errorf("resource path %q: part %q is not 1 to 128 letters, digits, '_', '.' or '-'", p, x)
		}
	}
	return Ref{parts[0], parts[1], parts[2]}, nil
}

// Path is "repo/type/tag".
func (r Ref) Path() string { return r.Repo + "/" + r.Type + "/" + r.Tag }

// String is "kbs:///repo/type/tag".
func (r Ref) String() string { return "kbs:///" + r.Path() }

// Hash names accepted for the runtime data.
const (
	HashSHA256 = "sha256"
	HashSHA384 = "sha384"
	HashSHA512 = "sha512"
)

func newHash(name string) (hash.Hash, error) {
	switch strings.ToLower(name) {
	case HashSHA256:
		return sha256.New(), nil
	case HashSHA384, "":
		return sha512.New384(), nil
	case HashSHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("unknown hash algorithm %q (want sha256, sha384 or sha512)", name)
}

// ReportData is the report data that binds runtimeData (any JSON object):
// the named hash of its canonical form, zero-padded to 64 bytes.
func ReportData(hashName string, runtimeData []byte) ([64]byte, error) {
	var out [64]byte
	h, err := newHash(hashName)
	if err != nil {
		return out, err
	}
	c, err := Canonical(runtimeData)
	if err != nil {
		return out, fmt.Errorf("runtime-data: %w", err)
	}
	h.Write(c)
	copy(out[:], h.Sum(nil))
	return out, nil
}

// maxDepth bounds the nesting of JSON that Canonical accepts.
const maxDepth = 32

// Canonical returns the RFC 8785 (JCS) form of a JSON text: object members
// sorted by their UTF-16 code units, no white space, strings with the
// minimal escapes. Numbers are written as ECMAScript does for integers and
// in Go's shortest form otherwise; the protocol's runtime data holds none.
func Canonical(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the JSON value")
	}
	var buf bytes.Buffer
	if err := canon(&buf, v, 0); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func canon(buf *bytes.Buffer, v any, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("JSON nested deeper than %d", maxDepth)
	}
	switch x := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(x))
	case json.Number:
		f, err := x.Float64()
		if err != nil {
			return fmt.Errorf("number %s: %w", x, err)
		}
		if f == float64(int64(f)) && f < 1e21 && f > -1e21 {
			buf.WriteString(strconv.FormatInt(int64(f), 10))
		} else {
			buf.WriteString(strconv.FormatFloat(f, 'g', -1, 64))
		}
	case string:
		canonString(buf, x)
	case []any:
		buf.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := canon(buf, e, depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			canonString(buf, k)
			buf.WriteByte(':')
			if err := canon(buf, x[k], depth+1); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("unexpected JSON value %T", v)
	}
	return nil
}

func lessUTF16(a, b string) bool {
	ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
	for i := 0; i < len(ua) && i < len(ub); i++ {
		if ua[i] != ub[i] {
			return ua[i] < ub[i]
		}
	}
	return len(ua) < len(ub)
}

func canonString(buf *bytes.Buffer, s string) {
	buf.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			if r < 0x20 {
				fmt.Fprintf(buf, `\u%04x`, r)
			} else {
				buf.WriteRune(r)
			}
		}
	}
	buf.WriteByte('"')
}
