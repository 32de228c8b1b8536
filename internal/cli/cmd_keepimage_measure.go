package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/castellan-dev/castellan/internal/measure/snp"
	"github.com/castellan-dev/castellan/internal/measure/tdx"
	"github.com/pelletier/go-toml/v2"
)

// Defaults of a VM keep that the measurement depends on; they must agree
// with how castellan launches one (internal/keep/qemu: q35, 1 vCPU,
// 512 MiB, SNP policy 0x30000, vCPU type EPYC-v4).
const (
	measureDefaultVCPUs  = 1
	measureDefaultMemory = 512 << 20
)

// Bounds on what the command reads, so that a wrong path (a disk image, a
// device) fails at once instead of filling memory.
const (
	maxFirmwareSize = 64 << 20
	maxKernelSize   = 512 << 20
	maxInitrdSize   = 2 << 30
	maxCmdlineSize  = 4096
)

var keepImageMeasureCmd = &Command{
	Name:    "keep-image measure",
	Usage:   "keep-image measure DIR --platform snp|tdx --firmware FILE [flags]",
	Summary: "print the reference values (launch measurement) of a keep image",
	Help: `Computes, ahead of time, the measurement that an SEV-SNP or TDX host will
report for a VM keep booted from the keep image DIR (DIR/kernel, DIR/initrd,
DIR/cmdline, as written by 'castellan keep-image build') with measured
direct boot and the firmware FILE, which must be the very file the host
gives QEMU. Prints a [[measurement]] entry for the attestation service's
measurement database (TOML, to paste), or JSON with --json.

--platform snp: the SEV-SNP launch MEASUREMENT of the OVMF AmdSev build
(SEV metadata pages, the SEV hashes table of kernel, initrd and command line
that QEMU writes with kernel-hashes=on, one VMSA per vCPU). It depends on
--vcpus, --vcpu-type and --guest-features; the defaults are what castellan
passes to QEMU: 1 vCPU, -cpu EPYC-v4, SEV features 0x1 (SNPActive only).
The guest policy castellan uses, 0x30000 (SMT allowed, no debug, no
migration agent), is reported beside the measurement, not in it.

--platform tdx: MRTD (the TDVF image's measured pages), RTMR[1] (the kernel
as QEMU patches it, and the boot events) and RTMR[2] (command line and
initrd). RTMR[1] depends on the guest memory (--memory, default 512 MiB as
castellan launches a keep); RTMR[0] depends on QEMU's ACPI tables and is not
computed. The entry's value is MRTD; rtmr1 and rtmr2 are extra keys.

The entry's name carries the image digest (SHA-256 over the SHA-256 of
kernel, initrd and cmdline, in that order), the firmware's SHA-256 and the
launch parameters.`,
}

type measureOptions struct {
	platform, firmware, vcpuType, guestFeatures, memory string
	vcpus                                               int
	json                                                bool
}

func addKeepImageMeasureFlags(fs *flag.FlagSet) *measureOptions {
	o := &measureOptions{}
	fs.StringVar(&o.platform, "platform", "", "snp or tdx (required)")
	fs.StringVar(&o.firmware, "firmware", "", "the OVMF/TDVF `file` the host gives QEMU (required)")
	fs.IntVar(&o.vcpus, "vcpus", measureDefaultVCPUs, "number of vCPUs (snp)")
	fs.StringVar(&o.vcpuType, "vcpu-type", snp.DefaultVCPUType, "QEMU -cpu model, for the CPUID signature in the VMSAs (snp)")
	fs.StringVar(&o.guestFeatures, "guest-features", fmt.Sprintf("%#x", snp.DefaultGuestFeatures), "SEV_FEATURES of the VMSAs (snp)")
	fs.StringVar(&o.memory, "memory", fmt.Sprintf("%dMiB", measureDefaultMemory>>20), "guest memory, MiB or GiB (tdx)")
	fs.BoolVar(&o.json, "json", false, "print JSON")
	return o
}

// keepImage is the measured part of a keep image folder.
type keepImage struct {
	kernel, initrd []byte
	cmdline        string
}

// digests returns the image digest: SHA-256 over the SHA-256 of the three files.
func (k *keepImage) digests() (image, kernel, initrd, cmdline [32]byte) {
	kernel, initrd, cmdline = sha256.Sum256(k.kernel), sha256.Sum256(k.initrd), sha256.Sum256([]byte(k.cmdline))
	all := append(append(append([]byte(nil), kernel[:]...), initrd[:]...), cmdline[:]...)
	return sha256.Sum256(all), kernel, initrd, cmdline
}

func readKeepImage(dir string) (*keepImage, error) {
	st, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: no such keep image folder", dir)
	}
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("%s: not a keep image folder", dir)
	}
	k := &keepImage{}
	if k.kernel, err = readFileLimited(filepath.Join(dir, "kernel"), maxKernelSize); err != nil {
		return nil, err
	}
	if len(k.kernel) < 0x1000 || string(k.kernel[0x202:0x206]) != "HdrS" {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "kernel"), tdx.ErrNotBzImage)
	}
	if k.initrd, err = readFileLimited(filepath.Join(dir, "initrd"), maxInitrdSize); err != nil {
		return nil, err
	}
	cp := filepath.Join(dir, "cmdline")
	c, err := readFileLimited(cp, maxCmdlineSize)
	if err != nil {
		return nil, err
	}
	switch {
	case bytes.ContainsAny(c, "\x00\n\r"):
		return nil, fmt.Errorf("%s: holds a NUL or line break (the command line is the exact bytes, with no trailing newline)", cp)
	case !utf8.Valid(c):
		return nil, fmt.Errorf("%s: not UTF-8", cp)
	}
	k.cmdline = string(c)
	return k, nil
}

// parseMemory reads "512MiB", "1GiB" or a number of MiB.
func parseMemory(s string) (uint64, error) {
	unit := uint64(1 << 20)
	num := s
	switch {
	case strings.HasSuffix(s, "GiB"):
		unit, num = 1<<30, strings.TrimSuffix(s, "GiB")
	case strings.HasSuffix(s, "MiB"):
		num = strings.TrimSuffix(s, "MiB")
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil || n == 0 || n*unit > 16<<40 {
		return 0, fmt.Errorf("--memory %q: want a size such as 512MiB or 4GiB", s)
	}
	return n * unit, nil
}

type measureImageJSON struct {
	Dir     string `json:"dir"`
	Digest  string `json:"digest"`
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd"`
	Cmdline string `json:"cmdline"`
}

type measureFirmwareJSON struct {
	Path   string `json:"path"`
	Digest string `json:"digest"`
}

type measureOutput struct {
	Platform      string              `json:"platform"`
	Measurement   string              `json:"measurement"`
	RTMR1         string              `json:"rtmr1,omitempty"`
	RTMR2         string              `json:"rtmr2,omitempty"`
	Name          string              `json:"name"`
	Image         measureImageJSON    `json:"image"`
	Firmware      measureFirmwareJSON `json:"firmware"`
	VCPUs         int                 `json:"vcpus,omitempty"`
	VCPUType      string              `json:"vcpu_type,omitempty"`
	GuestFeatures string              `json:"guest_features,omitempty"`
	Policy        string              `json:"policy,omitempty"`
	MemoryBytes   uint64              `json:"memory_bytes,omitempty"`
}

// measurementEntry is one [[measurement]] of the measurement database
// (internal/attest/policy). rtmr1/rtmr2 are for policies that check RTMRs.
type measurementEntry struct {
	Platform string `toml:"platform"`
	Value    string `toml:"value"`
	RTMR1    string `toml:"rtmr1,omitempty"`
	RTMR2    string `toml:"rtmr2,omitempty"`
	Name     string `toml:"name"`
}

func short(d [32]byte) string { return "sha256:" + hex.EncodeToString(d[:6]) }

func init() {
	DefineFlags(keepImageMeasureCmd.Name, func(fs *flag.FlagSet) { addKeepImageMeasureFlags(fs) })
	keepImageMeasureCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(keepImageMeasureCmd)
		o := addKeepImageMeasureFlags(fs)
		pos, status, ok := e.Parse(keepImageMeasureCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 1 {
			return e.Usagef("keep-image measure: want one keep image folder, got %d arguments", len(pos))
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		switch o.platform {
		case "snp":
			if set["memory"] {
				return e.Usagef("keep-image measure: --memory applies to --platform tdx only (the SEV-SNP measurement does not cover memory size)")
			}
		case "tdx":
			for _, f := range []string{"vcpus", "vcpu-type", "guest-features"} {
				if set[f] {
					return e.Usagef("keep-image measure: --%s applies to --platform snp only (no TDX measurement computed here covers it)", f)
				}
			}
		case "":
			return e.Usagef("keep-image measure: --platform snp or tdx is required")
		default:
			return e.Usagef("keep-image measure: --platform %q: want snp or tdx", o.platform)
		}
		if o.firmware == "" {
			return e.Usagef("keep-image measure: --firmware is required (the OVMF/TDVF file the host gives QEMU)")
		}
		out, err := measureKeepImage(pos[0], o)
		if err != nil {
			return e.Errorf("%v", err)
		}
		if o.json {
			return e.PrintJSON(out)
		}
		b, err := toml.Marshal(struct {
			Measurement []measurementEntry `toml:"measurement"`
		}{[]measurementEntry{{Platform: out.Platform, Value: out.Measurement, RTMR1: out.RTMR1, RTMR2: out.RTMR2, Name: out.Name}}})
		if err != nil {
			return e.Errorf("%v", err)
		}
		fmt.Fprintf(e.Stdout, "# Reference values of keep image %s (image %s, firmware %s),\n", out.Image.Dir, out.Image.Digest, out.Firmware.Digest)
		fmt.Fprintf(e.Stdout, "# from 'castellan keep-image measure'; add to the measurement database.\n")
		if out.Policy != "" {
			fmt.Fprintf(e.Stdout, "# SEV-SNP guest policy %s (in the report beside the measurement).\n", out.Policy)
		}
		if out.Platform == "tdx" {
			fmt.Fprintf(e.Stdout, "# value is MRTD; RTMR[0] (QEMU's ACPI tables) is not computed.\n")
		}
		_, err = e.Stdout.Write(b)
		if err != nil {
			return e.Errorf("%v", err)
		}
		return ExitOK
	}
	Register(keepImageMeasureCmd)
}

func measureKeepImage(dir string, o *measureOptions) (*measureOutput, error) {
	img, err := readKeepImage(dir)
	if err != nil {
		return nil, err
	}
	fwBytes, err := readFileLimited(o.firmware, maxFirmwareSize)
	if err != nil {
		return nil, err
	}
	id, kd, ind, cd := img.digests()
	fd := sha256.Sum256(fwBytes)
	out := &measureOutput{
		Platform: o.platform,
		Image: measureImageJSON{
			Dir: dir, Digest: "sha256:" + hex.EncodeToString(id[:]),
			Kernel: "sha256:" + hex.EncodeToString(kd[:]), Initrd: "sha256:" + hex.EncodeToString(ind[:]),
			Cmdline: "sha256:" + hex.EncodeToString(cd[:]),
		},
		Firmware: measureFirmwareJSON{Path: o.firmware, Digest: "sha256:" + hex.EncodeToString(fd[:])},
	}
	switch o.platform {
	case "snp":
		if o.vcpus < 1 || o.vcpus > snp.MaxVCPUs {
			return nil, fmt.Errorf("--vcpus %d: want 1 to %d", o.vcpus, snp.MaxVCPUs)
		}
		sig, err := snp.VCPUSignature(o.vcpuType)
		if err != nil {
			return nil, fmt.Errorf("--vcpu-type: %w", err)
		}
		features, err := strconv.ParseUint(o.guestFeatures, 0, 64)
		if err != nil || features&1 == 0 {
			return nil, fmt.Errorf("--guest-features %q: want a number with bit 0 (SNPActive) set, such as 0x1", o.guestFeatures)
		}
		fw, err := snp.ParseFirmware(fwBytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.firmware, err)
		}
		h := snp.NewHashes(img.kernel, img.initrd, img.cmdline)
		d, err := snp.Measure(fw, &h, snp.Params{VCPUs: o.vcpus, VCPUSig: sig, GuestFeatures: features})
		if err != nil {
			if errors.Is(err, snp.ErrNoKernelHashes) {
				return nil, fmt.Errorf("%s: %w", o.firmware, err)
			}
			return nil, err
		}
		out.Measurement = hex.EncodeToString(d[:])
		out.VCPUs, out.VCPUType = o.vcpus, o.vcpuType
		out.GuestFeatures = fmt.Sprintf("%#x", features)
		out.Policy = fmt.Sprintf("%#x", snp.DefaultPolicy)
		out.Name = fmt.Sprintf("keep image %s, firmware %s, snp, %d vCPU %s, features %s", short(id), short(fd), o.vcpus, o.vcpuType, out.GuestFeatures)
	case "tdx":
		mem, err := parseMemory(o.memory)
		if err != nil {
			return nil, err
		}
		fw, err := tdx.ParseFirmware(fwBytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.firmware, err)
		}
		m, err := tdx.Measure(fw, tdx.Inputs{Kernel: img.kernel, Initrd: img.initrd, Cmdline: img.cmdline, MemoryBytes: mem})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "kernel"), err)
		}
		out.Measurement = hex.EncodeToString(m.MRTD[:])
		out.RTMR1, out.RTMR2 = hex.EncodeToString(m.RTMR1[:]), hex.EncodeToString(m.RTMR2[:])
		out.MemoryBytes = mem
		out.Name = fmt.Sprintf("keep image %s, firmware %s, tdx, %d MiB", short(id), short(fd), mem>>20)
	}
	return out, nil
}
