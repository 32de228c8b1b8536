package qemu

import (
	"fmt"
	"os"
	"path/filepath"
)

// Files of a keep image (internal/keepimage writes them).
const (
	ImageKernel  = "kernel"
	ImageInitrd  = "initrd"
	ImageCmdline = "cmdline"
)

// Report says whether VM keeps can start here and how (`castellan
// platform info`).
type Report struct {
	*Support
	// Usable says whether a plain VM keep (backends nil, sim-snp,
	// sim-tdx) can start with the image given; Reason says why not.
	Usable  bool   `json:"usable"`
	Reason  string `json:"reason,omitempty"`
	Warning string `json:"warning,omitempty"` // TCG: slow, not isolated by hardware
	// Image is the keep image folder, or ImageReason why there is none.
	Image       string `json:"image,omitempty"`
	ImageReason string `json:"image_reason,omitempty"`
	// Kernel is the kernel 'castellan keep-image build' would put in an
	// image here, or KernelReason why there is none (set by the caller).
	Kernel       string `json:"kernel,omitempty"`
	KernelReason string `json:"kernel_reason,omitempty"`
	// Firmware is the firmware file of SNP and TDX VM keeps, or
	// FirmwareReason why there is none.
	Firmware       string `json:"firmware,omitempty"`
	FirmwareReason string `json:"firmware_reason,omitempty"`
}

// Inspect probes the host and checks an image folder and a firmware file
// (either may be "").
func Inspect(h Host, image, firmware string) *Report {
	r := &Report{Support: Probe(h)}
	if image == "" {
		r.ImageReason = "no keep image given (--keep-image DIR or $CASTELLAN_KEEP_IMAGE; 'castellan keep-image build -o DIR' makes one)"
	} else if _, _, _, err := readImage(image); err != nil {
		r.ImageReason = err.Error()
	} else {
		r.Image = image
	}
	if firmware == "" {
		r.FirmwareReason = "no firmware given (--firmware FILE: the SEV-SNP or TDX firmware the image's reference values were computed with; needed for snp and tdx VM keeps only)"
	} else if st, err := os.Stat(firmware); err != nil {
		r.FirmwareReason = err.Error()
	} else if !st.Mode().IsRegular() {
		r.FirmwareReason = firmware + ": not a regular file"
	} else {
		r.Firmware = firmware
	}
	_, r.Warning, _ = r.Plan("")
	switch {
	case r.QEMUError != "":
		r.Reason = r.QEMUError
	case r.Image == "":
		r.Reason = r.ImageReason
	default:
		r.Usable = true
	}
	return r
}

// readImage checks a keep image folder and returns its files' paths and
// its command line.
func readImage(dir string) (kernel, initrd, cmdline string, err error) {
	img, err := filepath.Abs(dir)
	if err != nil {
		return "", "", "", err
	}
	for _, f := range []string{ImageKernel, ImageInitrd, ImageCmdline} {
		st, err := os.Stat(filepath.Join(img, f))
		if err != nil || !st.Mode().IsRegular() {
			return "", "", "", fmt.Errorf("keep image %s: no %s file (build one with 'castellan keep-image build -o DIR')", img, f)
		}
	}
	b, err := os.ReadFile(filepath.Join(img, ImageCmdline))
	if err != nil {
		return "", "", "", fmt.Errorf("keep image: %w", err)
	}
	return filepath.Join(img, ImageKernel), filepath.Join(img, ImageInitrd), string(b), nil
}
