package verify

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/collateral"
	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	tdxverify "github.com/google/go-tdx-guest/verify"
)

// recorder is a collateral source that remembers what it served, so that
// the verifier can report the collateral's dates.
type recorder struct {
	src collateral.Source
	mu  sync.Mutex
	got map[string]*collateral.Response
}

func (r *recorder) Get(ctx context.Context, url string) (*collateral.Response, error) {
	resp, err := r.src.Get(ctx, url)
	if err == nil {
		r.mu.Lock()
		r.got[url] = resp
		r.mu.Unlock()
	}
	return resp, err
}

func tdxTimes(now time.Time) *tdxverify.TimeSet {
	return &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}
}

// checkTDXCollateral runs go-tdx-guest's collateral checks on a quote whose
// chain and signatures verified: Intel's TCB info for the PCK's FMSPC and
// the TD QE identity (each signed by Intel's TCB signing key, checked
// against the root CA CRL, within their next update), the PCK CRL and root
// CA CRL (nothing in the chain revoked), the TDX module's signer and
// attributes; then the TCB statuses Intel gives, against the policy.
//
// The library accepts only UpToDate: when it stops at another status, the
// statuses come from SupportedTcbLevelsFromCollateral and, if the TD's
// status stopped it before it compared the QE report with the QE identity,
// that comparison is made here.
func checkTDXCollateral(q any, roots *x509.CertPool, now time.Time, src collateral.Source, p *TDXPolicy, details map[string]string) error {
	rec := &recorder{src: src, got: map[string]*collateral.Response{}}
	o := &tdxverify.Options{
		GetCollateral:    true,
		CheckRevocations: true,
		Getter:           collateral.TDXGetter(rec),
		TrustedRoots:     roots,
		Now:              tdxTimes(now),
	}
	err := tdxverify.TdxQuote(q, o)
	statusStop := err != nil && strings.Contains(err.Error(), "failed TCB status check")
	if err != nil && !statusStop {
		return fail(CheckCollateral, "TDX quote: %v", err)
	}
	td, qe, err := tdxverify.SupportedTcbLevelsFromCollateral(q, o)
	if err != nil {
		if strings.Contains(err.Error(), "no matching") {
			return fail(CheckTCBStatus, "TDX quote: the platform's TCB is below every level in Intel's collateral: %v", err)
		}
		return fail(CheckCollateral, "TDX quote: %v", err)
	}
	var qeID pcs.QeIdentity
	if r := rec.got[pcs.QeIdentityURL()]; r != nil {
		if err := json.Unmarshal(r.Body, &qeID); err != nil {
			return fail(CheckCollateral, "TDX QE identity: %v", err)
		}
	}
	if statusStop && td.TcbStatus != pcs.TcbComponentStatusUpToDate {
		if err := qeReportMatches(qeReport(q), &qeID.EnclaveIdentity); err != nil {
			return fail(CheckCollateral, "TDX quote: QE report against Intel's QE identity: %v", err)
		}
	}
	if err := p.acceptStatus("TCB info", string(td.TcbStatus)); err != nil {
		return err
	}
	if err := p.acceptStatus("QE identity", string(qe.TcbStatus)); err != nil {
		return err
	}
	details["collateral"] = "verified"
	details["tcb_status"] = string(td.TcbStatus)
	details["qe_tcb_status"] = string(qe.TcbStatus)
	if td.TcbDate != "" {
		details["tcb_date"] = td.TcbDate
	}
	if len(td.AdvisoryIDs) > 0 {
		details["advisories"] = strings.Join(td.AdvisoryIDs, ",")
	}
	for url, r := range rec.got {
		if strings.Contains(url, "/tcb?") {
			var ti pcs.TdxTcbInfo
			if json.Unmarshal(r.Body, &ti) == nil {
				details["tcb_info_next_update"] = ti.TcbInfo.NextUpdate.UTC().Format(time.RFC3339)
			}
		}
	}
	if !qeID.EnclaveIdentity.NextUpdate.IsZero() {
		details["qe_identity_next_update"] = qeID.EnclaveIdentity.NextUpdate.UTC().Format(time.RFC3339)
	}
	return nil
}

func qeReport(q any) *pb.EnclaveReport {
	var sd *pb.Ecdsa256BitQuoteV4AuthData
	switch q := q.(type) {
	case *pb.QuoteV4:
		sd = q.GetSignedData()
	case *pb.QuoteV5:
		sd = q.GetSignedData()
	}
	return sd.GetCertificationData().GetQeReportCertificationData().GetQeReport()
}

// qeReportMatches compares a QE report with Intel's QE identity as
// go-tdx-guest does when the TCB status lets it (Intel's "Enclave Identity"
// algorithm: MRSIGNER, ISVPRODID, MISCSELECT and ATTRIBUTES under their
// masks), without the status, which the policy decides.
func qeReportMatches(r *pb.EnclaveReport, id *pcs.EnclaveIdentity) error {
	if r == nil {
		return errors.New("no QE report")
	}
	if len(id.MiscselectMask.Bytes) != 4 || len(id.Miscselect.Bytes) != 4 {
		return errors.New("MISCSELECT or its mask is not 4 bytes")
	}
	mask, want := binary.LittleEndian.Uint32(id.MiscselectMask.Bytes), binary.LittleEndian.Uint32(id.Miscselect.Bytes)
	if r.GetMiscSelect()&mask != want {
		return errors.New("MISCSELECT does not match")
	}
	attrs := r.GetAttributes()
	if len(id.AttributesMask.Bytes) != len(attrs) || len(id.Attributes.Bytes) != len(attrs) {
		return errors.New("ATTRIBUTES size does not match")
	}
	for i := range attrs {
		if attrs[i]&id.AttributesMask.Bytes[i] != id.Attributes.Bytes[i] {
			return errors.New("ATTRIBUTES do not match")
		}
	}
	if !bytes.Equal(r.GetMrSigner(), id.Mrsigner.Bytes) {
		return errors.New("MRSIGNER does not match")
	}
	if r.GetIsvProdId() != uint32(id.IsvProdID) {
		return errors.New("ISVPRODID does not match")
	}
	return nil
}
