package verify

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// defaultProductLine is assumed for version 2 reports, which do not say
// which CPU made them, when the VCEK must be fetched.
const defaultProductLine = "Milan"

func verifySNP(raw []byte, endorsements [][]byte, opts *Options) (*evidence.Claims, error) {
	if len(raw) != abi.ReportSize {
		return nil, fail(CheckFormat, "SEV-SNP report is %d bytes, want %d", len(raw), abi.ReportSize)
	}
	if err := abi.ValidateReportFormat(raw); err != nil {
		return nil, fail(CheckFormat, "SEV-SNP report: %v", err)
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fail(CheckFormat, "SEV-SNP report: %v", err)
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return nil, fail(CheckFormat, "SEV-SNP report: %v", err)
	}
	key := info.SigningKey
	if key != abi.VcekReportSigner && key != abi.VlekReportSigner {
		return nil, fail(CheckPlatform, "SEV-SNP report signed by %v; want VCEK or VLEK", key)
	}
	if report.GetSignatureAlgo() != abi.SignEcdsaP384Sha384 {
		return nil, fail(CheckFormat, "SEV-SNP report: signature algorithm %d, want ECDSA P-384 with SHA-384", report.GetSignatureAlgo())
	}
	productLine := ""
	if fms := report.GetCpuid1EaxFms(); fms != 0 {
		productLine = kds.ProductLineFromFms(fms)
	}

	ders, fetched := endorsements, false
	if len(ders) == 0 {
		if key == abi.VlekReportSigner {
			return nil, fail(CheckChain, "the envelope carries no VLEK certificate (the host provisions it; AMD does not serve it)")
		}
		if opts.Collateral == nil {
			return nil, fail(CheckChain, "the envelope carries no VCEK certificate and fetching from AMD is off")
		}
		line := productLine
		if line == "" {
			line = defaultProductLine
		}
		url := kds.VCEKCertURL(line, report.GetChipId(), kds.TCBVersion(report.GetReportedTcb()))
		r, err := opts.Collateral.Get(context.Background(), url)
		if err != nil {
			return nil, fail(CheckChain, "fetching the VCEK certificate: %v", err)
		}
		ders, fetched = [][]byte{r.Body}, true
	}

	// A chain verified before, under the same trusted roots and still
	// within its certificates' validity, is not verified again; what
	// binds the chain to this report (TCB, chip) and the report's own
	// signature are checked every time.
	now := opts.now()
	cache := opts.chainCache()
	ck := snpChainKey(ders, key, productLine, opts)
	chain := cache.get(ck, now)
	if chain == nil {
		if chain, err = verifySNPChain(raw, report, info, ders, fetched, productLine, opts, now); err != nil {
			return nil, err
		}
		cache.put(ck, chain)
	} else {
		if err := chain.bind(report, info); err != nil {
			return nil, err
		}
		if err := sevverify.SnpReportSignature(raw, chain.vcek); err != nil {
			return nil, fail(CheckSignature, "SEV-SNP report: %v", err)
		}
	}

	details, err := checkSNPFields(report, chain, &opts.SNP)
	if err != nil {
		return nil, err
	}
	if err := checkSNPRevocation(chain, opts, now, details); err != nil {
		return nil, err
	}
	policy, err := abi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		return nil, fail(CheckFormat, "SEV-SNP guest policy: %v", err)
	}
	c := &evidence.Claims{
		Platform:    evidence.PlatformSNP,
		Simulated:   chain.simulated,
		Measurement: bytes.Clone(report.GetMeasurement()),
		TCB:         snpTCB(chain.productLine, report.GetReportedTcb()),
		Debug:       policy.Debug,
		Details:     details,
	}
	copy(c.ReportData[:], report.GetReportData())
	return c, nil
}

// snpChain is a verified VCEK (VLEK) certificate chain: what a cache hit
// needs to check a report without verifying the chain again.
type snpChain struct {
	key         abi.ReportSigner
	vcek        *x509.Certificate // the VCEK or VLEK certificate
	exts        *kds.Extensions   // its KDS extensions (TCB, HWID)
	productLine string
	simulated   bool
	ark, ica    *x509.Certificate // the trusted root pair it chains to
	// The chain verifies only between these times: the latest NotBefore
	// and the earliest NotAfter of the VCEK and the root pair it chains to.
	notBefore, notAfter time.Time
}

// bind checks that the VCEK (VLEK) is the one for this report: its
// certificate must be for the TCB the report claims, or an old, weaker
// firmware could sign a report claiming a newer TCB; a VCEK must be for
// this chip.
func (c *snpChain) bind(report *spb.Report, info abi.SignerInfo) error {
	if uint64(c.exts.TCBVersion) != report.GetReportedTcb() {
		return fail(CheckChain, "%v certificate is for TCB %#x, the report claims %#x", c.key, uint64(c.exts.TCBVersion), report.GetReportedTcb())
	}
	if c.key == abi.VcekReportSigner && !info.MaskChipKey && !bytes.Equal(c.exts.HWID, report.GetChipId()) {
		return fail(CheckChain, "VCEK certificate is for another chip")
	}
	return nil
}

// verifySNPChain verifies the endorsements (ders, VCEK or VLEK first) up to
// a trusted root, binds them to the report and checks the report's
// signature, and returns the verified chain.
func verifySNPChain(raw []byte, report *spb.Report, info abi.SignerInfo, ders [][]byte, fetched bool, productLine string, opts *Options, now time.Time) (*snpChain, error) {
	key := info.SigningKey
	certs := make([]*x509.Certificate, len(ders))
	for i, der := range ders {
		var err error
		if certs[i], err = x509.ParseCertificate(der); err != nil {
			if fetched {
				return nil, fail(CheckChain, "VCEK certificate from AMD's key server: %v", err)
			}
			return nil, fail(CheckFormat, "endorsement %d: %v", i, err)
		}
	}
	vcek := certs[0]
	exts, err := kds.CertificateExtensions(vcek, key)
	if err != nil {
		return nil, fail(CheckChain, "%v certificate: %v", key, err)
	}
	if productLine == "" {
		p, err := kds.ParseProductName(exts.ProductName, key)
		if err != nil {
			return nil, fail(CheckChain, "%v certificate: %v", key, err)
		}
		productLine = kds.ProductLine(p)
	}

	// Pick the roots: the simulation roots if the VCEK chains to one of
	// them, else AMD's. Either way the library checks the chain again.
	simulated := false
	var roots []*trust.AMDRootCerts
	var used *trust.AMDRootCerts // the pair the VCEK chains to
	if sim := snpSimRoots(opts.SimRoots, certs[1:], productLine, key); len(sim) > 0 {
		for _, r := range sim {
			if _, err := vcek.Verify(*r.X509Options(now, key)); err == nil {
				roots, used, simulated = sim, r, true
				break
			}
		}
	}
	if !simulated {
		if opts.AMDRoots != nil {
			roots = opts.AMDRoots[productLine]
		} else if key == abi.VlekReportSigner {
			if r := vlekRoots()[productLine]; r != nil {
				roots = []*trust.AMDRootCerts{r}
			}
		} else if r, err := trust.GetDefaultRootCerts(productLine); err == nil {
			roots = []*trust.AMDRootCerts{r}
		}
		if len(roots) == 0 {
			return nil, fail(CheckChain, "no trusted AMD root for product line %q", productLine)
		}
		var lastErr error
		for _, r := range roots {
			o := r.X509Options(now, key)
			if o == nil {
				continue
			}
			if _, lastErr = vcek.Verify(*o); lastErr == nil {
				used = r
				break
			}
		}
		if used == nil {
			if len(certs) > 2 && isSimulated(certs[2]) {
				return nil, &Error{Check: CheckChain, Err: errSimNotTrusted()}
			}
			return nil, fail(CheckChain, "%v certificate does not chain to AMD's %s root: %v", key, productLine, lastErr)
		}
	}
	c := &snpChain{key: key, vcek: vcek, exts: exts, productLine: productLine, simulated: simulated}
	c.notBefore, c.notAfter = vcek.NotBefore, vcek.NotAfter
	ica := used.ProductCerts.Ask
	if key == abi.VlekReportSigner {
		ica = used.ProductCerts.Asvk
	}
	c.ark, c.ica = used.ProductCerts.Ark, ica
	for _, r := range []*x509.Certificate{used.ProductCerts.Ark, ica} {
		if r.NotBefore.After(c.notBefore) {
			c.notBefore = r.NotBefore
		}
		if r.NotAfter.Before(c.notAfter) {
			c.notAfter = r.NotAfter
		}
	}
	if err := c.bind(report, info); err != nil {
		return nil, err
	}

	chain := &spb.CertificateChain{VcekCert: vcek.Raw}
	if key == abi.VlekReportSigner {
		chain = &spb.CertificateChain{VlekCert: vcek.Raw}
	}
	if len(certs) > 1 {
		chain.AskCert = certs[1].Raw
	}
	if len(certs) > 2 {
		chain.ArkCert = certs[2].Raw
	}
	att := &spb.Attestation{Report: report, CertificateChain: chain}
	err = sevverify.SnpAttestation(att, &sevverify.Options{
		DisableCertFetching: true,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{productLine: roots},
		Now:                 now,
	})
	if err != nil {
		if serr := sevverify.SnpReportSignature(raw, vcek); serr != nil {
			return nil, fail(CheckSignature, "SEV-SNP report: %v", serr)
		}
		return nil, fail(CheckChain, "SEV-SNP report: %v", err)
	}
	return c, nil
}

// snpTCB names the components of a TCB_VERSION. Turin moved the fields and
// added the FMC's; Milan and Genoa share a layout.
func snpTCB(productLine string, v uint64) map[string]uint64 {
	b := func(i int) uint64 { return (v >> (8 * i)) & 0xff }
	if productLine == "Turin" {
		return map[string]uint64{"fmc": b(0), "bootloader": b(1), "tee": b(2), "snp": b(3), "microcode": b(7)}
	}
	return map[string]uint64{"bootloader": b(0), "tee": b(1), "snp": b(6), "microcode": b(7)}
}

// snpSimRoots turns simulation roots into the ARK/AS[V]K pairs go-sev-guest
// wants. A simulation root is an RSA ARK; its ASK (or ASVK, for a VLEK)
// comes from the envelope, and must be signed by the ARK.
func snpSimRoots(simRoots, intermediates []*x509.Certificate, productLine string, key abi.ReportSigner) []*trust.AMDRootCerts {
	icaName := "SEV-" + productLine
	if key == abi.VlekReportSigner {
		icaName = "SEV-VLEK-" + productLine
	}
	var out []*trust.AMDRootCerts
	for _, ark := range simRoots {
		if _, ok := ark.PublicKey.(*rsa.PublicKey); !ok || ark.Subject.CommonName != "ARK-"+productLine {
			continue
		}
		for _, ica := range intermediates {
			if ica.Subject.CommonName != icaName || ica.CheckSignatureFrom(ark) != nil {
				continue
			}
			pc := &trust.ProductCerts{Ark: ark, Ask: ica}
			if key == abi.VlekReportSigner {
				pc = &trust.ProductCerts{Ark: ark, Asvk: ica}
			}
			out = append(out, &trust.AMDRootCerts{ProductLine: productLine, ProductCerts: pc})
		}
	}
	return out
}

// vlekRoots are AMD's ARK/ASVK pairs by product line, from go-sev-guest's
// embedded KDS chains. (Its default roots are the ARK/ASK pairs for VCEKs.)
var vlekRoots = sync.OnceValue(func() map[string]*trust.AMDRootCerts {
	out := map[string]*trust.AMDRootCerts{}
	for line, pems := range map[string][]byte{
		"Milan": trust.AskArkMilanVlekBytes,
		"Genoa": trust.AskArkGenoaVlekBytes,
		"Turin": trust.AskArkTurinVlekBytes,
	} {
		// Some embedded files end with extra blank lines, which the KDS
		// parser refuses.
		pc := &trust.ProductCerts{}
		if err := pc.FromKDSCertBytes(append(bytes.TrimSpace(pems), '\n')); err != nil || pc.Asvk == nil || pc.Ark == nil {
			continue // a verification for that line then fails with "no trusted AMD root"
		}
		out[line] = &trust.AMDRootCerts{ProductLine: line, ProductCerts: pc}
	}
	return out
})
