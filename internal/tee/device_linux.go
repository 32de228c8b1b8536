//go:build linux

package tee

import (
	"fmt"

	sevabi "github.com/google/go-sev-guest/abi"
	sevclient "github.com/google/go-sev-guest/client"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	tdxclient "github.com/google/go-tdx-guest/client"
	"golang.org/x/sys/unix"
)

// sevDevice is /dev/sev-guest through ioctls. go-sev-guest's LinuxDevice
// sleeps two seconds between commands to stay under old kernels' rate
// limit, which would cost every keep start two seconds (an extended report
// takes two commands); the kernel's own throttling answers EAGAIN, which
// the library handles.
type sevDevice struct{ fd int }

var _ sevclient.Device = (*sevDevice)(nil)

func openSevDevice(path string) (sevclient.Device, error) {
	d := &sevDevice{fd: -1}
	if err := d.Open(path); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *sevDevice) Open(path string) error {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	d.fd = fd
	return nil
}

func (d *sevDevice) Close() error {
	if d.fd < 0 {
		return nil
	}
	err := unix.Close(d.fd)
	d.fd = -1
	return err
}

func (d *sevDevice) Ioctl(command uintptr, req any) (uintptr, error) {
	sreq, ok := req.(*labi.SnpUserGuestRequest)
	if !ok {
		return 0, fmt.Errorf("unexpected SEV guest request %T", req)
	}
	abi := sreq.ABI()
	result, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), command, uintptr(abi.Pointer()))
	if err := abi.Finish(sreq); err != nil {
		return 0, fmt.Errorf("SEV guest request: %w", err)
	}
	// The kernel copies back firmware errors only with EIO; anything else
	// leaves the field undefined.
	if errno != unix.EIO {
		sreq.FwErr = 0
	}
	if errno != 0 {
		return 0, errno
	}
	return result, nil
}

// Product is the CPU this guest runs on, from CPUID.
func (d *sevDevice) Product() *spb.SevProduct { return sevabi.SevProduct() }

func openTdxDevice(path string) (tdxclient.Device, error) {
	d := &tdxclient.LinuxDevice{}
	if err := d.Open(path); err != nil {
		return nil, err
	}
	return d, nil
}
