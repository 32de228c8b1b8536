package service

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/castellan-dev/castellan/internal/strictjson"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/kbs"
)

// The Trustee KBS protocol (package kbs), served beside /v1:
//
//	POST /kbs/v0/auth                          → challenge (a sealed nonce), cookie: an auth session
//	POST /kbs/v0/attest                        → {"token": EAR}, cookie: an attested session
//	GET  /kbs/v0/resource/<repo>/<type>/<tag>  → the [[secret]] value, JWE to the session's tee-pubkey
//
// Sessions are stateless like nonces: the cookie is sealed by the nonce
// key (HMAC-SHA-256 under its own domain), so replicas sharing the key
// serve each other's sessions. An auth session holds the platform and the
// challenge nonce; an attested one the verified platform, measurement and
// workload digest, the tee-pubkey and its expiry (the policy's
// certificate_lifetime). The nonce is redeemed in the used-nonce ledger
// at attest, so evidence serves once. Evidence goes through the same
// verifier and policy as /v1/certificate; only the report data differs:
// it binds the hash of the runtime data (package kbs).

// maxKBSBody bounds an Attestation (evidence in base64 inside JSON).
const maxKBSBody = 2 * MaxBodyBytes

const sessionDomain = "castellan kbs session v1"

// kbsSession is the sealed content of the kbs-session-id cookie.
type kbsSession struct {
	Stage       string          `json:"s"` // "auth" or "ok"
	Platform    string          `json:"p"`
	Nonce       []byte          `json:"n,omitempty"`
	Expires     int64           `json:"e"` // Unix seconds
	Simulated   bool            `json:"sim,omitempty"`
	Measurement string          `json:"m,omitempty"`
	Workload    string          `json:"w,omitempty"`
	Key         json.RawMessage `json:"k,omitempty"`
}

func (k *NonceKey) sessionMAC(b []byte) []byte {
	m := hmac.New(sha256.New, k.k[:])
	m.Write([]byte(sessionDomain))
	m.Write(b)
	return m.Sum(nil)
}

func (k *NonceKey) sealSession(s *kbsSession) string {
	b, _ := json.Marshal(s)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(b) + "." + enc.EncodeToString(k.sessionMAC(b))
}

var errNoSession = errors.New("no valid kbs-session-id cookie: start with /kbs/v0/auth")

func (k *NonceKey) openSession(r *http.Request, stage string, now time.Time) (*kbsSession, error) {
	c, err := r.Cookie(kbs.CookieName)
	if err != nil || len(c.Value) > 8192 {
		return nil, errNoSession
	}
	p, m, ok := strings.Cut(c.Value, ".")
	if !ok {
		return nil, errNoSession
	}
	enc := base64.RawURLEncoding
	b, err1 := enc.DecodeString(p)
	mac, err2 := enc.DecodeString(m)
	if err1 != nil || err2 != nil || !hmac.Equal(mac, k.sessionMAC(b)) {
		return nil, errNoSession
	}
	var s kbsSession
	if err := json.Unmarshal(b, &s); err != nil || s.Stage != stage {
		return nil, errNoSession
	}
	if !now.Before(time.Unix(s.Expires, 0)) {
		return nil, errors.New("the kbs session has expired: attest again")
	}
	return &s, nil
}

func setSession(w http.ResponseWriter, value string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{Name: kbs.CookieName, Value: value, Path: "/kbs/v0", Expires: expires,
		Secure: true, HttpOnly: true, SameSite: http.SameSiteStrictMode})
}

func kbsError(w http.ResponseWriter, status int, typ, detail string) {
	writeJSON(w, status, kbs.ErrorInformation{Type: kbs.ErrorType + typ, Detail: detail})
}

// kbsRecord audits a KBS decision; d.Check empty means accepted.
func (s *Service) kbsRecord(ctx context.Context, d audit.Decision) error {
	d.Accepted = d.Check == ""
	err := s.cfg.Audit.Record(ctx, d)
	if err != nil {
		s.cfg.Logf("audit log: recording a kbs decision (%s %s): %v", d.Package, d.Check, err)
	} else if s.cfg.Decided != nil {
		s.cfg.Decided(d)
	}
	return err
}

func (s *Service) kbsAuth(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		kbsError(w, http.StatusBadRequest, "InvalidRequest", "reading the request: "+err.Error())
		return
	}
	var req kbs.Request
	if err := json.Unmarshal(body, &req); err != nil {
		kbsError(w, http.StatusBadRequest, "InvalidRequest", clip("request: "+err.Error()))
		return
	}
	if !strings.HasPrefix(req.Version, "0.") {
		kbsError(w, http.StatusUnauthorized, "ProtocolVersion", clip(fmt.Sprintf("protocol version %q is not accepted (0.x)", req.Version)))
		return
	}
	platform, err := kbs.Platform(req.TEE)
	if err != nil {
		kbsError(w, http.StatusUnauthorized, "InvalidRequest", clip(err.Error()))
		return
	}
	now := s.cfg.Now()
	life := time.Duration(s.cfg.Policy.Current().Policy.NonceLifetime)
	nonce := s.cfg.NonceKey.seal(now, life)
	setSession(w, s.cfg.NonceKey.sealSession(&kbsSession{Stage: "auth", Platform: platform, Nonce: nonce, Expires: now.Add(life).Unix() + 1}), now.Add(life))
	writeJSON(w, http.StatusOK, kbs.Challenge{Nonce: base64.StdEncoding.EncodeToString(nonce),
		ExtraParams: map[string]any{kbs.SelectedHashKey: kbs.HashSHA384}})
}

func (s *Service) kbsAttest(w http.ResponseWriter, r *http.Request) {
	if !s.acquire(r.Context()) {
		w.Header().Set("Retry-After", "1")
		kbsError(w, http.StatusServiceUnavailable, "Busy", "the service is busy; try again shortly")
		return
	}
	defer func() { <-s.inFlight }()
	now := s.cfg.Now()
	d := audit.Decision{Time: now, Remote: r.RemoteAddr, Package: "kbs attest"}
	sess, err := s.cfg.NonceKey.openSession(r, "auth", now)
	if err != nil {
		d.Check, d.Reason = CheckNonce, err.Error()
		s.kbsRecord(r.Context(), d)
		kbsError(w, http.StatusUnauthorized, "Unauthorized", err.Error())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxKBSBody))
	var o outcome
	var ns *kbsSession
	var ref *Refusal
	if err != nil {
		ref = refuse(http.StatusBadRequest, CheckFormat, "reading the attestation: %v", err)
	} else {
		ns, ref = s.kbsVerify(r.Context(), sess, body, now, &d, &o)
	}
	if ref != nil {
		d.Check, d.Reason = ref.Check, ref.Reason
		s.kbsRecord(r.Context(), d)
		if ref.Status == http.StatusServiceUnavailable { // the used-nonce ledger is full or down
			w.Header().Set("Retry-After", "1")
			kbsError(w, ref.Status, "Busy", ref.Reason)
			return
		}
		kbsError(w, http.StatusUnauthorized, "AttestationFailed", ref.Check+": "+ref.Reason)
		return
	}
	tok, err := s.result(now, &o, nil)
	if err != nil {
		s.cfg.Logf("%v", err)
		kbsError(w, http.StatusInternalServerError, "TokenIssueFailed", "signing the attestation token failed")
		return
	}
	if s.kbsRecord(r.Context(), d) != nil {
		kbsError(w, http.StatusInternalServerError, "AuditUnavailable", "the audit log is unavailable; no session issued")
		return
	}
	setSession(w, s.cfg.NonceKey.sealSession(ns), time.Unix(ns.Expires, 0))
	writeJSON(w, http.StatusOK, kbs.AttestResponse{Token: tok})
}

// kbsVerify decides on an Attestation for an auth session.
func (s *Service) kbsVerify(ctx context.Context, sess *kbsSession, body []byte, now time.Time, d *audit.Decision, o *outcome) (*kbsSession, *Refusal) {
	var att kbs.Attestation
	if err := json.Unmarshal(body, &att); err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "attestation: %v", err)
	}
	var rt kbs.RuntimeData
	if err := strictjson.Decode(att.RuntimeData, &rt); err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "runtime-data: %v", err)
	}
	d.Platform, d.WorkloadDigest = sess.Platform, clip(rt.WorkloadDigest)
	nonce, err := base64.StdEncoding.DecodeString(rt.Nonce)
	if err != nil || subtle.ConstantTimeCompare(nonce, sess.Nonce) != 1 {
		return nil, refuse(http.StatusForbidden, CheckNonce, "runtime-data: the nonce is not this session's challenge")
	}
	snap := s.cfg.Policy.Current()
	if ref := s.redeem(ctx, nonce, now, &snap.Policy); ref != nil {
		return nil, ref
	}
	key, err := kbs.ParseTEEKey(rt.TEEPubKey)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckKey, "runtime-data: %v", err)
	}
	spkiDER, err := x509.MarshalPKIXPublicKey(key.Public)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckKey, "runtime-data: tee-pubkey: %v", err)
	}
	ev, err := kbs.ParseEvidence(sess.Platform, att.TEEEvidence)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "%v", err)
	}
	o.nonce, o.key, o.snap = nonce, key.Public, snap
	opts := snap.VerifyOptions(sess.Platform)
	opts.Now, opts.Collateral = now, s.cfg.Collateral
	claims, err := s.cfg.Report(sess.Platform, ev.Report, ev.Endorsements, opts)
	o.verified = true
	if err != nil {
		o.verifyCheck = verifyCheck(err)
		return nil, refuse(http.StatusForbidden, o.verifyCheck, "%v", err)
	}
	bound, err := kbs.BoundRuntimeData(att.RuntimeData, ev)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, CheckFormat, "%v", err)
	}
	binds := false
	for _, b := range bound {
		want, err := kbs.ReportData(kbs.HashSHA384, b)
		if err != nil {
			return nil, refuse(http.StatusBadRequest, CheckFormat, "%v", err)
		}
		if subtle.ConstantTimeCompare(want[:], claims.ReportData[:]) == 1 {
			binds = true
		}
	}
	if !binds {
		return nil, refuse(http.StatusForbidden, CheckReportData, "the report data does not bind the runtime data (the SHA-384 of its canonical JSON: nonce, tee-pubkey)")
	}
	claims.Key, claims.Nonce, claims.WorkloadDigest = spkiDER, nonce, rt.WorkloadDigest
	o.claims = claims
	summarise(d, claims)
	// A Confidential Containers guest binds no workload digest: the
	// policy's workload list (its last check) then does not apply, and
	// [[secret]] entries bound by measurement decide what it gets.
	if pr := snap.Check(claims); pr != nil && (pr.Check != policy.CheckWorkload || rt.WorkloadDigest != "") {
		return nil, refuse(http.StatusForbidden, pr.Check, "%s", pr.Reason)
	}
	exp := now.Add(time.Duration(snap.Policy.CertificateLifetime))
	d.NotAfter = exp
	return &kbsSession{Stage: "ok", Platform: claims.Platform, Expires: exp.Unix(), Simulated: claims.Simulated,
		Measurement: hex.EncodeToString(claims.Measurement), Workload: rt.WorkloadDigest, Key: rt.TEEPubKey}, nil
}

func (s *Service) kbsResource(w http.ResponseWriter, r *http.Request) {
	now := s.cfg.Now()
	path := r.PathValue("repo") + "/" + r.PathValue("type") + "/" + r.PathValue("tag")
	d := audit.Decision{Time: now, Remote: r.RemoteAddr, Package: clip("kbs:///" + path)}
	sess, err := s.cfg.NonceKey.openSession(r, "ok", now)
	if err != nil {
		d.Check, d.Reason = policy.CheckSecret, err.Error()
		s.kbsRecord(r.Context(), d)
		kbsError(w, http.StatusUnauthorized, "Unauthorized", err.Error())
		return
	}
	m, _ := hex.DecodeString(sess.Measurement)
	claims := &evidence.Claims{Platform: sess.Platform, Simulated: sess.Simulated, Measurement: m, WorkloadDigest: sess.Workload}
	d.Platform, d.Simulated, d.Measurement, d.WorkloadDigest = sess.Platform, sess.Simulated, sess.Measurement, sess.Workload
	ref, err := kbs.ParsePath(path)
	if err != nil {
		d.Check, d.Reason = CheckFormat, clip(err.Error())
		s.kbsRecord(r.Context(), d)
		kbsError(w, http.StatusBadRequest, "InvalidRequest", d.Reason)
		return
	}
	value, pr := s.cfg.Policy.Current().Release(ref.Path(), claims)
	if pr != nil {
		d.Check, d.Reason = pr.Check, pr.Reason
		s.kbsRecord(r.Context(), d)
		kbsError(w, http.StatusForbidden, "PolicyDeny", pr.Reason)
		return
	}
	key, err := kbs.ParseTEEKey(sess.Key)
	var out []byte
	if err == nil {
		out, err = kbs.Seal(key, value)
	}
	clear(value)
	if err != nil {
		s.cfg.Logf("kbs: sealing %s: %v", ref, err)
		kbsError(w, http.StatusInternalServerError, "SealFailed", "encrypting the resource failed")
		return
	}
	if s.kbsRecord(r.Context(), d) != nil {
		kbsError(w, http.StatusInternalServerError, "AuditUnavailable", "the audit log is unavailable; nothing released")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(out)
}
