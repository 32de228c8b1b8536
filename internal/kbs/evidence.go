package kbs

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/strictjson"
)

// Evidence is what tee-evidence carries, decoded: a raw hardware report
// or quote in the vendor's binary format, with its endorsements.
type Evidence struct {
	Platform     string   // evidence.Platform* ("snp", "tdx", "sgx", "cca")
	Report       []byte   // raw SEV-SNP report, TDX or SGX quote, CCA token
	Endorsements [][]byte // DER certificates, leaf first (SEV-SNP's VCEK chain)
	// Additional is the composite form's additional_evidence string, nil
	// in the plain form: the runtime data a guest-components attester
	// binds then includes it as "additional-evidence".
	Additional *string
}

// castellanEvidence is Castellan's form of tee-evidence (and of
// primary_evidence): byte fields in standard base64.
type castellanEvidence struct {
	Platform     string   `json:"platform"`
	Report       []byte   `json:"report"`
	Endorsements [][]byte `json:"endorsements,omitempty"`
}

// trusteeTDX is the form guest-components' TDX attester sends.
type trusteeTDX struct {
	Quote      string  `json:"quote"`
	CCEventlog *string `json:"cc_eventlog"`
	AAEventlog *string `json:"aa_eventlog,omitempty"`
}

// trusteeSGX is the form guest-components' SGX DCAP attester sends.
type trusteeSGX struct {
	Quote string `json:"quote"`
}

// trusteeCCA is the form guest-components' CCA attester sends: the token
// as a Vec<u8>, which serde_json writes as an array of numbers.
type trusteeCCA struct {
	Token byteArray `json:"token"`
}

type composite struct {
	Primary    json.RawMessage `json:"primary_evidence"`
	Additional *string         `json:"additional_evidence"`
}

// Platform maps a Request's tee onto a Castellan platform: Trustee's
// names ("snp", "tdx", "sgx", "cca") and the older "amd-sev-snp",
// "intel-tdx", "intel-sgx".
func Platform(tee string) (string, error) {
	switch tee {
	case "snp", "amd-sev-snp":
		return "snp", nil
	case "tdx", "intel-tdx":
		return "tdx", nil
	case "sgx", "intel-sgx":
		return "sgx", nil
	case "cca":
		return "cca", nil
	}
	return "", fmt.Errorf("tee %q is not accepted (snp, tdx, sgx or cca)", tee)
}

// MarshalEvidence writes Castellan's form of tee-evidence.
func MarshalEvidence(platform string, report []byte, endorsements [][]byte) (json.RawMessage, error) {
	return json.Marshal(castellanEvidence{Platform: platform, Report: report, Endorsements: endorsements})
}

// ParseEvidence decodes tee-evidence for a session whose Request named
// platform: Castellan's form {"platform", "report", "endorsements"} for
// every platform, or the form guest-components' attester for the platform
// sends (see TrusteeForms), each either alone or as the primary_evidence
// of the composite form. Unknown fields are refused.
func ParseEvidence(platform string, raw []byte) (*Evidence, error) {
	raw, err := unquote(raw)
	if err != nil {
		return nil, fmt.Errorf("tee-evidence: %w", err)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("tee-evidence: %w", err)
	}
	var additional *string
	if _, ok := probe["primary_evidence"]; ok {
		var c composite
		if err := strictjson.Decode(raw, &c); err != nil {
			return nil, fmt.Errorf("tee-evidence: %w", err)
		}
		if c.Additional == nil {
			return nil, errors.New("tee-evidence: composite evidence without additional_evidence")
		}
		additional = c.Additional
		if raw, err = unquote(c.Primary); err != nil {
			return nil, fmt.Errorf("tee-evidence: primary_evidence: %w", err)
		}
		probe = nil
		if err := json.Unmarshal(raw, &probe); err != nil {
			return nil, fmt.Errorf("tee-evidence: primary_evidence: %w", err)
		}
	}
	ev := &Evidence{Platform: platform, Additional: additional}
	switch {
	case probe["platform"] != nil:
		var c castellanEvidence
		if err := strictjson.Decode(raw, &c); err != nil {
			return nil, fmt.Errorf("tee-evidence: %w", err)
		}
		if c.Platform != platform {
			return nil, fmt.Errorf("tee-evidence: %s evidence in a %s session", c.Platform, platform)
		}
		if len(c.Report) == 0 {
			return nil, errors.New("tee-evidence: no report")
		}
		ev.Report, ev.Endorsements = c.Report, c.Endorsements
	case probe["attestation_report"] != nil && platform == "snp":
		if ev.Report, ev.Endorsements, err = parseSEVEvidence(raw); err != nil {
			return nil, fmt.Errorf("tee-evidence: snp attester form: %w", err)
		}
	case probe["quote"] != nil && (platform == "tdx" || platform == "sgx"):
		var tdx trusteeTDX
		var sgx trusteeSGX
		if platform == "tdx" {
			err = strictjson.Decode(raw, &tdx)
		} else {
			err = strictjson.Decode(raw, &sgx)
		}
		if err != nil {
			return nil, fmt.Errorf("tee-evidence: %w", err)
		}
		// The event log is not evaluated, but it must be what it says.
		if tdx.CCEventlog != nil {
			if _, err := base64.StdEncoding.DecodeString(*tdx.CCEventlog); err != nil {
				return nil, fmt.Errorf("tee-evidence: cc_eventlog: %w", err)
			}
		}
		q, err := base64.StdEncoding.DecodeString(tdx.Quote + sgx.Quote)
		if err != nil {
			return nil, fmt.Errorf("tee-evidence: quote: %w", err)
		}
		if len(q) == 0 {
			return nil, errors.New("tee-evidence: empty quote")
		}
		ev.Report = q
	case probe["token"] != nil && platform == "cca":
		var t trusteeCCA
		if err := strictjson.Decode(raw, &t); err != nil {
			return nil, fmt.Errorf("tee-evidence: cca attester form: %w", err)
		}
		if len(t.Token) == 0 {
			return nil, errors.New("tee-evidence: empty token")
		}
		ev.Report = t.Token
	default:
		return nil, fmt.Errorf("tee-evidence: not a form accepted for %s (Castellan's {\"platform\", \"report\"}, or the guest-components attester's %s)", platform, TrusteeForms[platform])
	}
	return ev, nil
}

// TrusteeForms names, by platform, the evidence form of guest-components'
// attester that ParseEvidence accepts and MarshalTrusteeEvidence writes.
var TrusteeForms = map[string]string{
	"snp": `{"attestation_report", "cert_chain"}`,
	"tdx": `{"quote", "cc_eventlog"}`,
	"sgx": `{"quote"}`,
	"cca": `{"token"}`,
}

// MarshalTrusteeEvidence writes a raw report or quote and its
// endorsements in the form Trustee's verifier reads for the platform, the
// form guest-components' attester sends: for snp the sev crate's JSON of
// the report and a cert_chain of the endorsements (VCEK or VLEK, ASK,
// ARK); for tdx and sgx the quote in base64 (tdx with no event log); for
// cca the token as an array of bytes. Only SEV-SNP carries endorsements.
func MarshalTrusteeEvidence(platform string, report []byte, endorsements [][]byte) (json.RawMessage, error) {
	if len(endorsements) > 0 && platform != "snp" {
		return nil, fmt.Errorf("the %s attester form carries no endorsements", platform)
	}
	switch platform {
	case "snp":
		return marshalSEVEvidence(report, endorsements)
	case "tdx":
		q := base64.StdEncoding.EncodeToString(report)
		return json.Marshal(trusteeTDX{Quote: q})
	case "sgx":
		return json.Marshal(trusteeSGX{Quote: base64.StdEncoding.EncodeToString(report)})
	case "cca":
		return json.Marshal(trusteeCCA{Token: report})
	}
	return nil, fmt.Errorf("platform %q has no Trustee evidence form (snp, tdx, sgx or cca)", platform)
}

// unquote returns the JSON text inside a JSON string, as older guest
// components send evidence (a string holding the attester's JSON), and
// anything else as it is.
func unquote(raw []byte) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '"' {
		return raw, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// BoundRuntimeData returns the JSON objects whose hash the report data may
// bind: the runtime data as sent and, for composite evidence, the runtime
// data with "additional-evidence" added, as guest-components binds it.
func BoundRuntimeData(runtimeData []byte, ev *Evidence) ([][]byte, error) {
	out := [][]byte{runtimeData}
	if ev.Additional == nil {
		return out, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(runtimeData, &m); err != nil {
		return nil, fmt.Errorf("runtime-data: %w", err)
	}
	a, _ := json.Marshal(*ev.Additional)
	m["additional-evidence"] = a
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append(out, b), nil
}
