package cli

import (
	"flag"
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

var platformInfoCmd = &Command{
	Name:    "platform info",
	Usage:   "platform info [--json] [--keep-image DIR] [--firmware FILE]",
	Summary: "say which TEE backends this host can use, and why not",
	Help: `For each backend (snp, tdx, sgx, cca, sim-snp, sim-tdx, sim-sgx, sim-cca,
nil) prints whether a keep can use it here, the reason if not, and a hint.
"--backend auto" picks snp, tdx, sgx or cca when usable, else nil; it never
picks a simulation.

Also prints the measurements that simulated evidence from this castellan
binary claims (SNP and TDX: SHA-384 of the executable; the SGX MRENCLAVE and
the CCA Realm Initial Measurement derived from it), for the measurement
database, and the file holding the simulation roots, for a policy that
trusts them.

Then VM keep support (a keep booted as its own micro-VM from a keep image):
QEMU's path and version, whether KVM is usable (and why not: a /dev/kvm
node is not enough), whether this host can launch SEV-SNP or TDX VMs,
the keep image (--keep-image, or $CASTELLAN_KEEP_IMAGE), the kernel that
'castellan keep-image build' would use, and the firmware for SNP and TDX
VM keeps (--firmware).

When castellan itself runs in a confidential VM (snp or tdx usable), it also
says what a process keep there does not prove: the measurement covers that
VM's firmware only, not castellan or the VM's kernel.`,
}

type platformInfoOutput struct {
	Backends        []tee.Status `json:"backends"`
	Auto            string       `json:"auto"`
	SimMeasurement  string       `json:"sim_measurement"`
	SimSGXMREnclave string       `json:"sim_sgx_mrenclave"`
	SimCCARIM       string       `json:"sim_cca_rim"`
	SimRoots        string       `json:"sim_roots,omitempty"`
	// VMKeeps is VM keep support; ProcessKeeps says what a process keep
	// proves here when castellan runs in a confidential VM.
	VMKeeps      *qemu.Report `json:"vm_keeps"`
	ProcessKeeps string       `json:"process_keeps,omitempty"`
}

type platformInfoFlags struct {
	asJSON          *bool
	image, firmware *string
}

func addPlatformInfoFlags(fs *flag.FlagSet) platformInfoFlags {
	return platformInfoFlags{
		asJSON:   fs.Bool("json", false, "print JSON"),
		image:    fs.String("keep-image", os.Getenv("CASTELLAN_KEEP_IMAGE"), "keep image folder to check for VM keeps ($CASTELLAN_KEEP_IMAGE)"),
		firmware: fs.String("firmware", "", "firmware file to check for SNP and TDX VM keeps"),
	}
}

// platformHost is what platform info probes for VM keeps; tests fake it.
var platformHost qemu.Host = qemu.OS{}

// processKeepNote says what a process keep in a confidential VM proves.
const processKeepNote = "a process keep here runs inside this confidential VM: its evidence's measurement covers the VM's firmware only, not castellan, the kernel or the VM's OS, which are trusted unmeasured (anyone root in this VM can ask for a report with any report data); a VM keep (--keep vm on a host that launches SNP or TDX VMs) measures firmware, kernel, initramfs with castellan and command line"

func init() {
	DefineFlags(platformInfoCmd.Name, func(fs *flag.FlagSet) { addPlatformInfoFlags(fs) })
	platformInfoCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(platformInfoCmd)
		f := addPlatformInfoFlags(fs)
		asJSON := f.asJSON
		pos, status, ok := e.Parse(platformInfoCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("platform info: takes no arguments, got %q", pos[0])
		}
		out := platformInfoOutput{Backends: tee.Info(), Auto: tee.NameNil,
			VMKeeps: qemu.Inspect(platformHost, *f.image, *f.firmware)}
		if k, _, err := keepimage.FindKernel(); err != nil {
			out.VMKeeps.KernelReason = err.Error()
		} else {
			out.VMKeeps.Kernel = k
		}
		for _, s := range out.Backends {
			if s.Usable && (s.Name == tee.NameSNP || s.Name == tee.NameTDX || s.Name == tee.NameSGX || s.Name == tee.NameCCA) {
				out.Auto = s.Name
				out.ProcessKeeps = processKeepNote
				break
			}
		}
		m, err := tee.SimMeasurement()
		if err != nil {
			return e.Errorf("%v", err)
		}
		out.SimMeasurement = m
		if out.SimSGXMREnclave, err = tee.SimSGXMeasurement(); err != nil {
			return e.Errorf("%v", err)
		}
		if out.SimCCARIM, err = tee.SimCCAMeasurement(); err != nil {
			return e.Errorf("%v", err)
		}
		if dir, err := sim.DefaultDir(); err == nil {
			out.SimRoots = sim.RootsPath(dir)
		}
		if *asJSON {
			if code := e.PrintJSON(out); code != ExitOK {
				return code
			}
			return ExitOK
		}
		for _, s := range out.Backends {
			state := "usable"
			if !s.Usable {
				state = "not usable"
			}
			fmt.Fprintf(e.Stdout, "%-8s %-4s %s\n", s.Name, s.Platform, state)
			if s.Reason != "" {
				fmt.Fprintf(e.Stdout, "         why:  %s\n", s.Reason)
			}
			if s.Hint != "" {
				fmt.Fprintf(e.Stdout, "         hint: %s\n", s.Hint)
			}
		}
		fmt.Fprintf(e.Stdout, "\nauto:            %s\n", out.Auto)
		fmt.Fprintf(e.Stdout, "sim measurement: %s\n", out.SimMeasurement)
		fmt.Fprintf(e.Stdout, "sim sgx mrenclave: %s\n", out.SimSGXMREnclave)
		fmt.Fprintf(e.Stdout, "sim cca rim:     %s\n", out.SimCCARIM)
		if out.SimRoots != "" {
			fmt.Fprintf(e.Stdout, "sim roots:       %s\n", out.SimRoots)
		}
		if out.ProcessKeeps != "" {
			fmt.Fprintf(e.Stdout, "process keeps:   %s\n", out.ProcessKeeps)
		}
		printVMKeeps(e, out.VMKeeps)
		return ExitOK
	}
	Register(platformInfoCmd)
}

// printVMKeeps prints the VM keep part of platform info.
func printVMKeeps(e *Env, r *qemu.Report) {
	yesNo := func(ok bool, what, why string) string {
		if ok {
			return what
		}
		return "no: " + why
	}
	state := "usable"
	if !r.Usable {
		state = "not usable: " + r.Reason
	} else if r.Accel == qemu.AccelTCG {
		state = "usable, under TCG (emulation: slow, and not isolated by hardware)"
	}
	fmt.Fprintf(e.Stdout, "\nvm keeps:        %s\n", state)
	q := r.QEMUError
	if q == "" {
		q = r.QEMU + " (QEMU " + r.QEMUVersion + ")"
	}
	fmt.Fprintf(e.Stdout, "  qemu:          %s\n", q)
	fmt.Fprintf(e.Stdout, "  kvm:           %s\n", yesNo(r.KVM, "usable", r.KVMReason))
	fmt.Fprintf(e.Stdout, "  snp vms:       %s\n", yesNo(r.SNP, "yes (sev-snp-guest, measured direct boot)", r.SNPReason))
	fmt.Fprintf(e.Stdout, "  tdx vms:       %s\n", yesNo(r.TDX, "yes (tdx-guest)", r.TDXReason))
	fmt.Fprintf(e.Stdout, "  keep image:    %s\n", yesNo(r.Image != "", r.Image, r.ImageReason))
	fmt.Fprintf(e.Stdout, "  kernel:        %s\n", yesNo(r.Kernel != "", r.Kernel+" (for 'castellan keep-image build')", r.KernelReason))
	fmt.Fprintf(e.Stdout, "  firmware:      %s\n", yesNo(r.Firmware != "", r.Firmware, r.FirmwareReason))
}
