package tee

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/report"
	sevabi "github.com/google/go-sev-guest/abi"
	sevclient "github.com/google/go-sev-guest/client"
	tdxclient "github.com/google/go-tdx-guest/client"
)

// Kernel interfaces, by default path.
const (
	DefaultTSMRoot     = configfsi.TsmPrefix // /sys/kernel/config/tsm
	DefaultSevGuest    = "/dev/sev-guest"
	DefaultTdxGuest    = "/dev/tdx_guest"
	providerSevGuest   = "sev_guest"
	providerTdxGuest   = "tdx_guest"
	maxKernelQuoteSize = evidence.MaxEvidenceSize
)

// kernelSource says how a real backend reaches the hardware. Both real
// backends share it: configfs-tsm first, the character device second.
type kernelSource struct {
	// TSMRoot is the configfs-tsm directory; "" = DefaultTSMRoot.
	TSMRoot string
	// TSM replaces the configfs client (tests use go-configfs-tsm's fake).
	// Nil = the kernel's configfs at TSMRoot.
	TSM configfsi.Client
	// DevicePath is the guest device; "" = the platform's default.
	DevicePath string
}

func (k *kernelSource) tsm() (configfsi.Client, bool) {
	if k.TSM != nil {
		return k.TSM, true
	}
	root := k.TSMRoot
	if root == "" {
		root = DefaultTSMRoot
	}
	if fi, err := os.Stat(filepath.Join(root, "report")); err != nil || !fi.IsDir() {
		return nil, false
	}
	return &rootedTSM{root: root}, true
}

// provider creates a report entry, reads its provider and removes it.
func provider(c configfsi.Client) (string, error) {
	r, err := report.CreateOpenReport(c)
	if err != nil {
		return "", err
	}
	defer r.Destroy()
	// The kernel answers "provider" at once; go-configfs-tsm's fake answers
	// attributes only after a write, so give it the (unused) inblob first.
	if err := r.WriteOption("inblob", make([]byte, 64)); err != nil {
		return "", err
	}
	p, err := r.ReadOption("provider")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(p)), nil
}

// tsmReport asks configfs-tsm for a report from the named provider.
func tsmReport(c configfsi.Client, want string, rd [64]byte, aux bool) (*report.Response, error) {
	resp, err := report.Get(c, &report.Request{InBlob: rd[:], GetAuxBlob: aux})
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: %w", err)
	}
	if p := strings.TrimSpace(resp.Provider); p != want {
		return nil, fmt.Errorf("configfs-tsm: report provider is %q, want %q", p, want)
	}
	return resp, nil
}

// rootedTSM is the kernel's configfs-tsm at another path than
// /sys/kernel/config/tsm (go-configfs-tsm's linuxtsm has the path fixed).
type rootedTSM struct{ root string }

var _ configfsi.Client = (*rootedTSM)(nil)

func (c *rootedTSM) path(name string) (string, error) {
	if name != configfsi.TsmPrefix && !strings.HasPrefix(name, configfsi.TsmPrefix+"/") {
		return "", fmt.Errorf("configfs-tsm: %q is not under %s", name, configfsi.TsmPrefix)
	}
	return filepath.Join(c.root, strings.TrimPrefix(name, configfsi.TsmPrefix)), nil
}

func (c *rootedTSM) MkdirTemp(dir, pattern string) (string, error) {
	p, err := c.path(dir)
	if err != nil {
		return "", err
	}
	d, err := os.MkdirTemp(p, pattern)
	if err != nil {
		return "", err
	}
	rel, err := filepath.Rel(c.root, d)
	if err != nil {
		return "", err
	}
	return configfsi.TsmPrefix + "/" + filepath.ToSlash(rel), nil
}

func (c *rootedTSM) ReadFile(name string) ([]byte, error) {
	p, err := c.path(name)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

func (c *rootedTSM) ReadDir(name string) ([]os.DirEntry, error) {
	p, err := c.path(name)
	if err != nil {
		return nil, err
	}
	return os.ReadDir(p)
}

func (c *rootedTSM) WriteFile(name string, b []byte) error {
	p, err := c.path(name)
	if err != nil {
		return err
	}
	// configfs attributes exist once the entry does; never create files.
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, werr := f.Write(b)
	if err := f.Close(); werr == nil {
		werr = err
	}
	return werr
}

// RemoveAll removes a report entry: configfs entries go with rmdir, which
// the kernel allows on a directory full of attributes.
func (c *rootedTSM) RemoveAll(name string) error {
	p, err := c.path(name)
	if err != nil {
		return err
	}
	return os.Remove(p)
}

// SNP is the backend inside an AMD SEV-SNP guest.
type SNP struct {
	kernelSource
	// OpenDevice opens the SEV guest device at path; nil = Linux ioctls.
	// Tests use go-sev-guest's fake device.
	OpenDevice func(path string) (sevclient.Device, error)
}

var _ Backend = (*SNP)(nil)

// NewSNP returns the snp backend reading configfs-tsm at tsmRoot and the
// device at devicePath ("" for either = the default).
func NewSNP(tsmRoot, devicePath string) *SNP {
	return &SNP{kernelSource: kernelSource{TSMRoot: tsmRoot, DevicePath: devicePath}}
}

// WithTSM sets the configfs-tsm client (tests).
func (s *SNP) WithTSM(c configfsi.Client) *SNP { s.TSM = c; return s }

func (*SNP) Name() string     { return NameSNP }
func (*SNP) Platform() string { return evidence.PlatformSNP }

func (s *SNP) device() string {
	if s.DevicePath != "" {
		return s.DevicePath
	}
	return DefaultSevGuest
}

func (s *SNP) open() (sevclient.Device, error) {
	if s.OpenDevice != nil {
		return s.OpenDevice(s.device())
	}
	return openSevDevice(s.device())
}

func (s *SNP) tsmRoot() string {
	if s.TSMRoot != "" {
		return s.TSMRoot
	}
	return DefaultTSMRoot
}

func (s *SNP) Available() error {
	if c, ok := s.tsm(); ok {
		p, err := provider(c)
		if err != nil {
			return fmt.Errorf("%s/report: %w", s.tsmRoot(), err)
		}
		if p == providerSevGuest {
			return nil
		}
		return fmt.Errorf("%s/report provider is %q: not an SEV-SNP guest", s.tsmRoot(), p)
	}
	if s.OpenDevice == nil && !exists(s.device()) {
		return fmt.Errorf("no %s/report and no %s: not inside an SEV-SNP guest", s.tsmRoot(), s.device())
	}
	d, err := s.open()
	if err != nil {
		return err
	}
	return d.Close()
}

// Evidence returns the attestation report at VMPL 0 and the certificates
// the host provisioned (VCEK, ASK, ARK), if any; without them a verifier
// fetches the VCEK from AMD.
func (s *SNP) Evidence(ctx context.Context, rd [64]byte) ([]byte, [][]byte, error) {
	var raw, certs []byte
	if c, ok := s.tsm(); ok {
		resp, err := tsmReport(c, providerSevGuest, rd, true)
		if err != nil {
			return nil, nil, err
		}
		raw, certs = resp.OutBlob, resp.AuxBlob
	} else {
		d, err := s.open()
		if err != nil {
			return nil, nil, err
		}
		// The suggested replacement, a LeveledQuoteProvider, opens the
		// fixed /dev/sev-guest itself; this call takes the device we
		// opened (DevicePath, or the fake device of the tests).
		//lint:ignore SA1019 the replacement cannot take our Device
		raw, certs, err = sevclient.GetRawExtendedReportAtVmpl(d, rd, 0)
		d.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", s.device(), err)
		}
	}
	if len(raw) < sevabi.ReportSize {
		return nil, nil, fmt.Errorf("SEV-SNP report is %d bytes, want %d", len(raw), sevabi.ReportSize)
	}
	raw = raw[:sevabi.ReportSize]
	endorsements, err := snpEndorsements(certs)
	if err != nil {
		return nil, nil, err
	}
	return raw, endorsements, nil
}

// snpEndorsements reads the GUID table of an extended report: the VCEK,
// ASK and ARK, or for a VLEK-signing host the VLEK (and the ARK if given),
// leaf first, skipping what the host did not provision. Without a leaf the
// rest is of no use: the verifier fetches the VCEK and has AMD's roots.
func snpEndorsements(table []byte) ([][]byte, error) {
	if len(table) == 0 || isZero(table) {
		return nil, nil
	}
	var t sevabi.CertTable
	if err := t.Unmarshal(table); err != nil {
		return nil, fmt.Errorf("SEV-SNP certificate table: %w", err)
	}
	get := func(guid string) []byte {
		der, err := t.GetByGUIDString(guid)
		if err != nil || len(der) == 0 {
			return nil
		}
		return der
	}
	var out [][]byte
	if vlek := get(sevabi.VlekGUID); vlek != nil && get(sevabi.VcekGUID) == nil {
		out = append(out, vlek)
	} else if vcek := get(sevabi.VcekGUID); vcek != nil {
		out = append(out, vcek)
		if ask := get(sevabi.AskGUID); ask != nil {
			out = append(out, ask)
		}
	} else {
		return nil, nil
	}
	if ark := get(sevabi.ArkGUID); ark != nil {
		out = append(out, ark)
	}
	return out, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// TDX is the backend inside an Intel TDX trust domain.
type TDX struct {
	kernelSource
	// OpenDevice opens the TDX guest device at path; nil = Linux ioctls.
	// Tests use go-tdx-guest's fake device.
	OpenDevice func(path string) (tdxclient.Device, error)
}

var _ Backend = (*TDX)(nil)

// NewTDX returns the tdx backend reading configfs-tsm at tsmRoot and the
// device at devicePath ("" for either = the default).
func NewTDX(tsmRoot, devicePath string) *TDX {
	return &TDX{kernelSource: kernelSource{TSMRoot: tsmRoot, DevicePath: devicePath}}
}

// WithTSM sets the configfs-tsm client (tests).
func (t *TDX) WithTSM(c configfsi.Client) *TDX { t.TSM = c; return t }

func (*TDX) Name() string     { return NameTDX }
func (*TDX) Platform() string { return evidence.PlatformTDX }

func (t *TDX) device() string {
	if t.DevicePath != "" {
		return t.DevicePath
	}
	return DefaultTdxGuest
}

func (t *TDX) tsmRoot() string {
	if t.TSMRoot != "" {
		return t.TSMRoot
	}
	return DefaultTSMRoot
}

func (t *TDX) open() (tdxclient.Device, error) {
	if t.OpenDevice != nil {
		return t.OpenDevice(t.device())
	}
	return openTdxDevice(t.device())
}

func (t *TDX) Available() error {
	if c, ok := t.tsm(); ok {
		p, err := provider(c)
		if err != nil {
			return fmt.Errorf("%s/report: %w", t.tsmRoot(), err)
		}
		if p == providerTdxGuest {
			return nil
		}
		return fmt.Errorf("%s/report provider is %q: not a TDX guest", t.tsmRoot(), p)
	}
	if t.OpenDevice == nil && !exists(t.device()) {
		return fmt.Errorf("no %s/report and no %s: not inside a TDX guest", t.tsmRoot(), t.device())
	}
	d, err := t.open()
	if err != nil {
		return err
	}
	return d.Close()
}

// Evidence returns a TDX quote; its PCK chain is inside it.
func (t *TDX) Evidence(ctx context.Context, rd [64]byte) ([]byte, [][]byte, error) {
	var q []byte
	if c, ok := t.tsm(); ok {
		resp, err := tsmReport(c, providerTdxGuest, rd, false)
		if err != nil {
			return nil, nil, err
		}
		q = resp.OutBlob
	} else {
		d, err := t.open()
		if err != nil {
			return nil, nil, err
		}
		q, err = tdxclient.GetRawQuote(d, rd)
		d.Close()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", t.device(), err)
		}
	}
	if len(q) == 0 || len(q) > maxKernelQuoteSize {
		return nil, nil, fmt.Errorf("TDX quote is %d bytes, want 1 to %d", len(q), maxKernelQuoteSize)
	}
	return q, nil, nil
}
