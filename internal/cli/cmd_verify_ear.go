package cli

import (
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/eartoken"
	"github.com/castellan-dev/castellan/internal/pemcerts"
	"github.com/veraison/ear"
)

// earOutput is what verify --ear --json prints.
type earOutput struct {
	File           string            `json:"file"`
	Verified       bool              `json:"verified"`
	Error          string            `json:"error,omitempty"`
	Check          string            `json:"check,omitempty"`
	Status         string            `json:"status,omitempty"`
	TrustVector    map[string]int    `json:"trustworthiness_vector,omitempty"`
	Platform       string            `json:"platform,omitempty"`
	Simulated      bool              `json:"simulated"`
	Debug          bool              `json:"debug"`
	TCB            map[string]uint64 `json:"tcb,omitempty"`
	Measurement    string            `json:"measurement,omitempty"`
	WorkloadDigest string            `json:"workload_digest,omitempty"`
	SPIFFEID       string            `json:"spiffe_id,omitempty"`
	RefusedBy      string            `json:"refused_by,omitempty"`
	Nonce          string            `json:"nonce,omitempty"`
	Verifier       string            `json:"verifier,omitempty"`
	IssuedAt       time.Time         `json:"issued_at"`
	Expires        time.Time         `json:"expires"`
}

// verifyEAR checks an EAR file from the attestation service: signature with
// the CA's key (--ca), expiry, status (affirming; warning only with
// --allow-insecure), and the workload and platform if asked.
func verifyEAR(e *Env, f *verifyFlags, exp expectFlags) int {
	file := *f.ear
	if *f.ca == "" {
		return e.Usagef("verify --ear: --ca is required (the attestation service's ca.pem, whose key signs EARs)")
	}
	pb, err := os.ReadFile(*f.ca)
	if err != nil {
		return e.Errorf("--ca: %v", err)
	}
	cas, err := pemcerts.Parse(pb)
	if err != nil || len(cas) == 0 {
		return e.Errorf("--ca: %s: no PEM certificate in it", *f.ca)
	}
	var tok []byte
	if file == "-" {
		tok, err = io.ReadAll(io.LimitReader(e.Stdin, eartoken.MaxTokenSize+1))
	} else {
		tok, err = readFileLimited(file, eartoken.MaxTokenSize)
	}
	if err != nil {
		return e.Errorf("--ear: %v", err)
	}
	out, check, verr := checkEAR(strings.TrimSpace(string(tok)), cas, exp)
	out.File = file
	if verr != nil {
		out.Error, out.Check = verr.Error(), check
	}
	out.Verified = verr == nil
	switch {
	case *f.json:
		e.PrintJSON(out)
	case out.Status != "":
		printEAR(e, &out)
	}
	if verr != nil {
		return e.Errorf("ear %s: %v", file, verr)
	}
	return ExitOK
}

// expectFlags is what a relying party requires, from the flags.
type expectFlags struct {
	digest        string
	platforms     []string
	allowInsecure bool
}

func checkEAR(tok string, cas []*x509.Certificate, exp expectFlags) (earOutput, string, error) {
	var out earOutput
	var r *eartoken.Result
	var err error
	for _, c := range cas { // any CA in the file, as a bundle of service CAs
		if r, err = eartoken.Verify([]byte(tok), c.PublicKey, time.Now()); err == nil {
			break
		}
	}
	if err != nil {
		return out, "ear", err
	}
	a := r.AR.Submods[eartoken.Submod]
	out.Status = r.Status().String()
	out.Expires = r.Expires.UTC()
	out.IssuedAt = time.Unix(*r.AR.IssuedAt, 0).UTC()
	if r.AR.Nonce != nil {
		out.Nonce = *r.AR.Nonce
	}
	if v := r.AR.VerifierID; v != nil && v.Build != nil {
		out.Verifier = *v.Build
	}
	if a.TrustVector != nil {
		out.TrustVector = map[string]int{}
		for k, c := range a.TrustVector.AsMap() {
			if c != ear.NoClaim {
				out.TrustVector[k] = int(c)
			}
		}
	}
	ev := r.Evidence()
	out.Platform, _ = ev["platform"].(string)
	out.Simulated, _ = ev["simulated"].(bool)
	out.Debug, _ = ev["debug"].(bool)
	out.WorkloadDigest, _ = ev["workload_digest"].(string)
	out.Measurement, _ = ev["measurement"].(string)
	if tcb, ok := ev["tcb"].(map[string]any); ok {
		out.TCB = map[string]uint64{}
		for k, v := range tcb {
			if n, ok := v.(float64); ok && n >= 0 {
				out.TCB[k] = uint64(n)
			}
		}
	}
	if pc := a.VeraisonPolicyClaims; pc != nil {
		out.SPIFFEID, _ = (*pc)["spiffe_id"].(string)
		out.RefusedBy, _ = (*pc)["refused_by"].(string)
	}
	switch st := r.Status(); {
	case st == ear.TrustTierContraindicated:
		return out, "status", fmt.Errorf("status is contraindicated%s", refusedBy(out.RefusedBy))
	case st == ear.TrustTierWarning && !exp.allowInsecure:
		return out, "status", fmt.Errorf("status is warning (%s) and insecure keeps are not allowed", warningReason(&out))
	case st != ear.TrustTierAffirming && st != ear.TrustTierWarning:
		return out, "status", fmt.Errorf("status is %s", st)
	}
	if exp.digest != "" && out.WorkloadDigest != exp.digest {
		return out, "digest", fmt.Errorf("keep runs workload %s, expected %s", out.WorkloadDigest, exp.digest)
	}
	if len(exp.platforms) > 0 && !slices.Contains(exp.platforms, out.Platform) {
		return out, "platform", fmt.Errorf("keep runs on platform %s, expected one of %v", out.Platform, exp.platforms)
	}
	return out, "", nil
}

func refusedBy(check string) string {
	if check == "" {
		return ""
	}
	return " (refused by the " + check + " check)"
}

func warningReason(o *earOutput) string {
	switch {
	case o.Platform == "none":
		return "no TEE"
	case o.Simulated:
		return "simulated " + o.Platform
	}
	return "a claim in the warning tier"
}

func printEAR(e *Env, o *earOutput) {
	w := e.Stdout
	fmt.Fprintf(w, "ear:         %s\n", o.File)
	fmt.Fprintf(w, "status:      %s\n", o.Status)
	if o.WorkloadDigest != "" {
		fmt.Fprintf(w, "workload:    %s\n", o.WorkloadDigest)
	}
	if o.SPIFFEID != "" {
		fmt.Fprintf(w, "spiffe id:   %s\n", o.SPIFFEID)
	}
	if o.Platform != "" {
		p := o.Platform
		if o.Simulated {
			p += " (simulated)"
		}
		fmt.Fprintf(w, "platform:    %s\n", p)
		fmt.Fprintf(w, "debug:       %s\n", map[bool]string{true: "yes", false: "no"}[o.Debug])
	}
	if o.Measurement != "" {
		fmt.Fprintf(w, "measurement: %s\n", o.Measurement)
	}
	if len(o.TCB) > 0 {
		fmt.Fprintf(w, "tcb:         %s\n", sortedPairs(o.TCB))
	}
	if len(o.TrustVector) > 0 {
		fmt.Fprintf(w, "vector:      %s\n", sortedPairs(o.TrustVector))
	}
	if o.RefusedBy != "" {
		fmt.Fprintf(w, "refused by:  %s\n", o.RefusedBy)
	}
	fmt.Fprintf(w, "verifier:    %s\n", o.Verifier)
	fmt.Fprintf(w, "issued:      %s\n", o.IssuedAt.Format(time.RFC3339))
	fmt.Fprintf(w, "valid until: %s\n", o.Expires.Format(time.RFC3339))
	fmt.Fprintf(w, "verified:    %s\n", map[bool]string{true: "yes", false: "no"}[o.Verified])
}
