package cli

import (
	"context"
	"flag"
	"fmt"
	"os/exec"
	"strings"

	"github.com/castellan-dev/castellan/internal/keepimage"
)

var keepImageBuildCmd = &Command{
	Name:    "keep-image build",
	Usage:   "keep-image build -o DIR [--kernel FILE] [--modules DIR] [--castellan FILE]",
	Summary: "build the boot image of VM keeps (kernel, initramfs with castellan, command line)",
	Help: `Writes DIR/kernel (copied byte for byte), DIR/initrd (a deterministic
gzip-compressed cpio holding castellan as /init and the guest's kernel
modules), DIR/cmdline (the fixed kernel command line) and DIR/image.json.
The same inputs give the same bytes, so the launch measurement of a VM keep
can be recomputed by anyone (see 'castellan keep-image measure').

The kernel is --kernel FILE, else the last boot/vmlinuz-* under
$CASTELLAN_KERNEL_DIR (an unpacked linux-image package), else under /boot;
its modules are --modules DIR, else lib/modules/RELEASE beside it.

castellan is built from the source tree that holds the working folder
(CGO_ENABLED=0, -trimpath, no build ID, the toolchain go.mod names), which
is reproducible. --castellan FILE puts a given binary instead: the image is
then only as reproducible as that binary's build.`,
}

type keepImageBuildFlags struct {
	out, kernel, modules, castellan *string
}

func addKeepImageBuildFlags(fs *flag.FlagSet) keepImageBuildFlags {
	return keepImageBuildFlags{
		out:       fs.String("o", "", "the image folder to write"),
		kernel:    fs.String("kernel", "", "the Linux kernel (bzImage)"),
		modules:   fs.String("modules", "", "the kernel's modules folder (lib/modules/RELEASE)"),
		castellan: fs.String("castellan", "", "the castellan binary to use as /init (default: build it from source)"),
	}
}

func init() {
	DefineFlags(keepImageBuildCmd.Name, func(fs *flag.FlagSet) { addKeepImageBuildFlags(fs) })
	keepImageBuildCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(keepImageBuildCmd)
		f := addKeepImageBuildFlags(fs)
		pos, status, ok := e.Parse(keepImageBuildCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("keep-image build: takes no arguments, got %q", pos[0])
		}
		if *f.out == "" {
			return e.Usagef("keep-image build: -o DIR is required")
		}
		o := keepimage.Options{Out: *f.out, Kernel: *f.kernel, Modules: *f.modules, Castellan: *f.castellan,
			Progress: e.Infof}
		if o.Castellan == "" {
			o.Commit = sourceCommit()
		}
		info, err := keepimage.Build(context.Background(), o)
		if err != nil {
			return e.Errorf("keep-image build: %v", err)
		}
		fmt.Fprintf(e.Stdout, "image %s\n", *f.out)
		fmt.Fprintf(e.Stdout, "  kernel   %s  sha256:%s\n", info.Kernel.Release, info.Kernel.SHA256)
		fmt.Fprintf(e.Stdout, "  initrd   %d bytes  sha256:%s\n", info.Initrd.Size, info.Initrd.SHA256)
		fmt.Fprintf(e.Stdout, "  cmdline  %q\n", keepimage.Cmdline)
		fmt.Fprintf(e.Stdout, "  castellan sha256:%s (%s)\n", info.Castellan.SHA256, info.Castellan.Source)
		fmt.Fprintf(e.Stdout, "  modules  %s\n", strings.Join(info.Modules, " "))
		return ExitOK
	}
	Register(keepImageBuildCmd)
}

// sourceCommit names the git commit of the working folder for image.json,
// with "+dirty" when files differ from it; "" outside git.
func sourceCommit() string {
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "+dirty"
	}
	return c
}
