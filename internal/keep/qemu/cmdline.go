// Package qemu launches VM keeps with QEMU (qemu-system-x86_64, an
// existing maintained VMM): each keep is a micro-VM booted straight from a
// keep image (kernel, initramfs whose /init is castellan, fixed command
// line; internal/keepimage), with no network and no disk. Its one link to
// the host is a virtio-serial port on a Unix socket in the keep's folder,
// over which the host sends the keep's parameters and relays the
// confidential delivery (internal/keep/vmproto); the serial console
// carries logs only. A keep with volumes (a pod's) also gets one virtio-fs
// device per volume, each served by a sandboxed virtiofsd (virtiofsd.go).
//
// On an SEV-SNP host the VM is launched with measured direct boot
// (sev-snp-guest, kernel-hashes=on) with the firmware that `castellan
// keep-image measure` was given, so its launch measurement covers
// firmware, kernel, initramfs and command line; on a TDX host as a TD
// (tdx-guest). Elsewhere it is a plain VM under KVM where KVM is usable,
// else under TCG (emulation: slow, and not isolated by hardware).
//
// This file builds QEMU's command line (golden files in testdata); probe.go
// finds what the host has, behind a narrow interface with fakes; vm.go is
// the keep.Launcher.
package qemu

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/internal/keep/vmproto"
	"github.com/castellan-dev/castellan/internal/measure/snp"
)

// Accelerators.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Confidential VM kinds ("" is a plain VM).
const (
	SNP = "snp"
	TDX = "tdx"
)

// Defaults of an SEV-SNP launch. The policy and the vCPU type are those
// of `castellan keep-image measure --platform snp` (internal/measure/snp):
// the vCPU type is part of the launch measurement (through the VMSAs).
const (
	DefaultSNPPolicy = snp.DefaultPolicy
	DefaultVCPUType  = snp.DefaultVCPUType
	// C-bit position and physical address bits lost to encryption, as
	// on EPYC Milan and Genoa; the probe reads the host's from CPUID
	// 0x8000001F where it can.
	DefaultCBitPos         = 51
	DefaultReducedPhysBits = 1
)

// Files in the keep's folder that QEMU uses.
const (
	ChannelSocket = "channel.sock" // the virtio-serial port "castellan"
	ConsoleLog    = "console.log"  // the serial console: kernel and castellan logs
	ChannelName   = "castellan"    // the port's name in the guest
)

// Machine is one VM to start.
type Machine struct {
	Accel string // AccelKVM or AccelTCG
	// Confidential is SNP, TDX or "" for a plain VM. SNP and TDX need KVM
	// and Firmware.
	Confidential string
	// Kernel and Initrd are files of the keep image; Cmdline is the
	// image's command line itself (exact bytes).
	Kernel, Initrd, Cmdline string
	// Firmware is the firmware of a confidential VM (-bios): the file the
	// reference values were computed with. A plain VM boots with QEMU's
	// own BIOS.
	Firmware    string
	MemoryBytes int64
	VCPUs       int
	// Dir is the keep's folder: the channel's socket goes there.
	Dir string
	// SNP parameters; zero values take the defaults.
	SNPPolicy       uint64
	CBitPos         int
	ReducedPhysBits int
	VCPUType        string
	// FS are the VM's virtio-fs devices (the keep's volumes), each served
	// by a virtiofsd on a vhost-user socket.
	FS []FS
}

// FS is one virtio-fs device: the tag the guest mounts, and the
// vhost-user socket of the virtiofsd that serves it.
type FS struct {
	Tag    string
	Socket string
}

// Args returns QEMU's arguments (without the program name). The serial
// console is QEMU's standard output.
func (m *Machine) Args() ([]string, error) {
	if err := m.check(); err != nil {
		return nil, err
	}
	mem := strconv.FormatInt(m.MemoryBytes>>20, 10) + "M"
	machine := "q35,accel=" + m.Accel
	cpu := "max"
	if m.Accel == AccelKVM {
		cpu = "host"
	}
	var objects []string
	// Virtio devices of a confidential guest must use the guest's bounce
	// buffers (VIRTIO_F_ACCESS_PLATFORM) and be modern-only.
	virtioOpts := ""
	switch m.Confidential {
	case SNP:
		machine += ",confidential-guest-support=sev0,memory-backend=ram1,vmport=off"
		cpu = m.VCPUType
		if cpu == "" {
			cpu = DefaultVCPUType
		}
		policy, cbit, rpb := m.SNPPolicy, m.CBitPos, m.ReducedPhysBits
		if policy == 0 {
			policy = DefaultSNPPolicy
		}
		if cbit == 0 {
			cbit = DefaultCBitPos
		}
		if rpb == 0 {
			rpb = DefaultReducedPhysBits
		}
		objects = append(objects,
			"-object", "memory-backend-memfd,id=ram1,size="+mem+",share=true,prealloc=false",
			"-object", fmt.Sprintf("sev-snp-guest,id=sev0,cbitpos=%d,reduced-phys-bits=%d,kernel-hashes=on,policy=%#x", cbit, rpb, policy))
		virtioOpts = ",disable-legacy=on,iommu_platform=true"
	case TDX:
		machine += ",kernel-irqchip=split,confidential-guest-support=tdx0"
		objects = append(objects, "-object", "tdx-guest,id=tdx0")
		virtioOpts = ",disable-legacy=on,iommu_platform=true"
	}
	machine, objects = m.sharedMemory(machine, mem, objects)
	args := []string{
		"-machine", machine,
		"-cpu", cpu,
		"-smp", strconv.Itoa(m.VCPUs),
		"-m", mem,
	}
	args = append(args, objects...)
	if m.Firmware != "" {
		args = append(args, "-bios", m.Firmware)
	}
	args = append(args,
		// Nothing but what follows: no network, no disk, no display, no
		// monitor, no user config file.
		"-nodefaults", "-no-user-config", "-nic", "none", "-display", "none",
		"-no-reboot",
		"-kernel", m.Kernel,
		"-initrd", m.Initrd,
		"-append", m.Cmdline,
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-device", "virtio-serial-pci,id=virtio-serial0"+virtioOpts,
		"-chardev", "socket,id="+ChannelName+",path="+filepath.Join(m.Dir, ChannelSocket)+",server=on,wait=off",
		"-device", "virtserialport,chardev="+ChannelName+",name="+ChannelName,
	)
	args = append(args, m.fsArgs(virtioOpts)...)
	return args, nil
}

// sharedMemory gives a VM with virtio-fs devices its RAM in shared memory
// (a memfd, share=on): a vhost-user daemon maps the guest's RAM to read
// and write the virtqueues' buffers. An SEV-SNP VM already has its RAM in
// a shared memfd (its private memory is the kernel's guest_memfd, never
// mapped by anyone); a plain VM and a TD get one only when they have
// virtio-fs devices, so that their command lines are otherwise unchanged.
func (m *Machine) sharedMemory(machine, mem string, objects []string) (string, []string) {
	if len(m.FS) == 0 || m.Confidential == SNP {
		return machine, objects
	}
	return machine + ",memory-backend=ram1", append(objects,
		"-object", "memory-backend-memfd,id=ram1,size="+mem+",share=true,prealloc=false")
}

// fsArgs are the virtio-fs devices: one vhost-user socket (QEMU is the
// client) and one vhost-user-fs-pci device each. A confidential guest's
// devices use its bounce buffers (virtioOpts), as the channel's does.
func (m *Machine) fsArgs(virtioOpts string) []string {
	var args []string
	for i, fs := range m.FS {
		id := "fs" + strconv.Itoa(i)
		args = append(args,
			"-chardev", "socket,id="+id+",path="+fs.Socket,
			"-device", "vhost-user-fs-pci,chardev="+id+",tag="+fs.Tag+virtioOpts)
	}
	return args
}

// checkFS checks the virtio-fs devices: tags of letters, digits and
// dashes, each once; sockets without commas.
func (m *Machine) checkFS() error {
	seen := map[string]bool{}
	for _, fs := range m.FS {
		if !vmproto.ValidVolumeTag(fs.Tag) {
			return fmt.Errorf("qemu: virtio-fs tag %q (want 1 to %d letters, digits or dashes)", fs.Tag, vmproto.MaxVolumeTag)
		}
		if seen[fs.Tag] {
			return fmt.Errorf("qemu: virtio-fs tag %q given twice", fs.Tag)
		}
		seen[fs.Tag] = true
		if fs.Socket == "" || strings.Contains(fs.Socket, ",") {
			return fmt.Errorf("qemu: virtio-fs socket %q is empty or holds a comma, which QEMU's options cannot take", fs.Socket)
		}
	}
	return nil
}

func (m *Machine) check() error {
	switch {
	case m.Accel != AccelKVM && m.Accel != AccelTCG:
		return fmt.Errorf("qemu: accelerator %q (want kvm or tcg)", m.Accel)
	case m.Confidential != "" && m.Confidential != SNP && m.Confidential != TDX:
		return fmt.Errorf("qemu: confidential VM kind %q (want snp or tdx)", m.Confidential)
	case m.Confidential != "" && m.Accel != AccelKVM:
		return fmt.Errorf("qemu: an %s VM needs KVM, not %s", m.Confidential, m.Accel)
	case m.Confidential != "" && m.Firmware == "":
		return fmt.Errorf("qemu: an %s VM needs its firmware file (the one its reference values were computed with)", m.Confidential)
	case m.Kernel == "" || m.Initrd == "":
		return errors.New("qemu: no kernel or initrd")
	case m.MemoryBytes < 64<<20 || m.MemoryBytes%(1<<20) != 0:
		return fmt.Errorf("qemu: memory of %d bytes (want a whole number of MiB, at least 64MiB)", m.MemoryBytes)
	case m.VCPUs < 1 || m.VCPUs > 255:
		return fmt.Errorf("qemu: %d vCPUs (want 1 to 255)", m.VCPUs)
	case m.Dir == "":
		return errors.New("qemu: no keep folder")
	}
	// QEMU's option parser splits on commas: a path with one would be
	// read as more options.
	for _, p := range []string{m.Kernel, m.Initrd, m.Firmware, m.Dir} {
		if strings.Contains(p, ",") {
			return fmt.Errorf("qemu: path %q holds a comma, which QEMU's options cannot take", p)
		}
	}
	return m.checkFS()
}
