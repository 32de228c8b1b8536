// Package keepimage builds the boot image of a VM keep (`castellan
// keep-image build`): a folder with the Linux kernel (copied byte for
// byte), a deterministic initramfs holding the castellan binary as /init
// and the few kernel modules the guest needs, the fixed kernel command
// line, and image.json describing them. The launch measurement of a VM
// keep covers the first three, so the same inputs must give the same
// bytes: the initramfs depends on nothing but its contents, and the
// castellan binary is built reproducibly from source (BuildCastellan).
package keepimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Cmdline is the kernel command line of every keep image: the same for
// every keep (it is measured); per-keep parameters go over the channel.
// "castellan.keep" marks a keep guest for the castellan binary as /init.
const Cmdline = "console=ttyS0 panic=-1 quiet castellan.keep=1"

// Files of an image folder.
const (
	KernelFile  = "kernel"
	InitrdFile  = "initrd"
	CmdlineFile = "cmdline"
	InfoFile    = "image.json"
)

// Paths inside the initramfs.
const (
	InitPath      = "init"
	ModulesDir    = "lib/modules"
	ModulesList   = "etc/castellan/modules" // module file names in load order, one a line
	FormatVersion = 1
)

// Options of Build.
type Options struct {
	Out       string // the image folder (created if missing)
	Kernel    string // bzImage; "" = FindKernel
	Modules   string // the kernel's modules folder (lib/modules/RELEASE); "" = beside the kernel
	Castellan string // the castellan binary for /init; "" = build it from Source
	Source    string // castellan's source tree; "" = the one holding the working folder
	Commit    string // recorded in image.json when known
	// Progress receives a line before each long step; nil = none.
	Progress func(format string, a ...any)
}

// Info is image.json. It is not measured: the measurement covers the
// kernel, initrd and cmdline files themselves.
type Info struct {
	Format    int           `json:"format"`
	Castellan CastellanInfo `json:"castellan"`
	Kernel    KernelInfo    `json:"kernel"`
	Initrd    FileInfo      `json:"initrd"`
	Cmdline   FileInfo      `json:"cmdline"`
	Modules   []string      `json:"modules"`
}

// CastellanInfo says which castellan is /init.
type CastellanInfo struct {
	SHA256 string `json:"sha256"`
	// Source is "built from source" (reproducible) or "given" (--castellan:
	// reproducible only if that binary was built with BuildFlags).
	Source    string `json:"source"`
	Toolchain string `json:"toolchain,omitempty"`
	Commit    string `json:"commit,omitempty"`
}

// KernelInfo describes the kernel file.
type KernelInfo struct {
	Release string `json:"release"`
	SHA256  string `json:"sha256"`
}

// FileInfo is a file's digest and size.
type FileInfo struct {
	SHA256 string `json:"sha256"`
	Size   int    `json:"size"`
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// Build writes an image folder and returns its description.
func Build(ctx context.Context, o Options) (*Info, error) {
	progress := o.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	if o.Out == "" {
		return nil, errors.New("no output folder")
	}
	kernelPath, modDir := o.Kernel, o.Modules
	if kernelPath == "" {
		k, m, err := FindKernel()
		if err != nil {
			return nil, err
		}
		kernelPath = k
		if modDir == "" {
			modDir = m
		}
	}
	kernel, err := os.ReadFile(kernelPath)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	rel, err := KernelRelease(kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", kernelPath, err)
	}
	if modDir == "" {
		if modDir = ModulesDirFor(filepath.Join(filepath.Dir(kernelPath), ".."), rel); modDir == "" {
			modDir = ModulesDirFor("/", rel)
		}
		if modDir == "" {
			return nil, fmt.Errorf("no modules folder for kernel %s (release %s): give --modules DIR (its lib/modules/%s)", kernelPath, rel, rel)
		}
	}
	mods, err := ResolveModules(modDir, RequiredModules, WantedModules)
	if err != nil {
		return nil, err
	}

	info := &Info{Format: FormatVersion, Kernel: KernelInfo{Release: rel, SHA256: sum(kernel)}}
	var castellan []byte
	if o.Castellan != "" {
		if castellan, err = os.ReadFile(o.Castellan); err != nil {
			return nil, fmt.Errorf("castellan binary: %w", err)
		}
		info.Castellan.Source = "given"
	} else {
		src := o.Source
		if src == "" {
			wd, err := os.Getwd()
			if err != nil {
				return nil, err
			}
			if src, err = FindSource(wd); err != nil {
				return nil, fmt.Errorf("%w (give --castellan FILE, or run from castellan's source)", err)
			}
		}
		tc, err := Toolchain(src)
		if err != nil {
			return nil, err
		}
		tmp, err := os.MkdirTemp("", "castellan-keep-image-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		progress("building castellan from %s with %s (go build %s)", src, tc, strings.Join(BuildFlags, " "))
		bin := filepath.Join(tmp, "castellan")
		if err := BuildCastellan(ctx, src, bin); err != nil {
			return nil, err
		}
		if castellan, err = os.ReadFile(bin); err != nil {
			return nil, err
		}
		info.Castellan.Source, info.Castellan.Toolchain, info.Castellan.Commit = "built from source", tc, o.Commit
	}
	if err := checkStatic(castellan); err != nil {
		return nil, fmt.Errorf("castellan binary: %w", err)
	}
	info.Castellan.SHA256 = sum(castellan)

	entries := []Entry{
		{Name: InitPath, Mode: 0o755, Data: castellan},
		{Name: "dev", Mode: 0o755, Dir: true},
		{Name: "proc", Mode: 0o555, Dir: true},
		{Name: "sys", Mode: 0o555, Dir: true},
		{Name: "tmp", Mode: 0o1777, Dir: true},
	}
	var list bytes.Buffer
	for _, m := range mods {
		b, err := ReadModuleELF(filepath.Join(modDir, m.Path))
		if err != nil {
			return nil, fmt.Errorf("module %s: %w", m.Name, err)
		}
		// Stored uncompressed: any kernel loads it, whatever its
		// CONFIG_MODULE_DECOMPRESS; the initramfs is compressed anyway.
		name := m.Name + ".ko"
		entries = append(entries, Entry{Name: ModulesDir + "/" + name, Mode: 0o644, Data: b})
		fmt.Fprintln(&list, name)
		info.Modules = append(info.Modules, m.Name)
	}
	entries = append(entries, Entry{Name: ModulesList, Mode: 0o644, Data: list.Bytes()})
	progress("writing the initramfs (castellan %d bytes, %d modules)", len(castellan), len(mods))
	var initrd bytes.Buffer
	if err := WriteInitramfs(&initrd, entries); err != nil {
		return nil, err
	}
	info.Initrd = FileInfo{SHA256: sum(initrd.Bytes()), Size: initrd.Len()}
	info.Cmdline = FileInfo{SHA256: sum([]byte(Cmdline)), Size: len(Cmdline)}
	ib, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFiles(o.Out, map[string][]byte{
		KernelFile:  kernel,
		InitrdFile:  initrd.Bytes(),
		CmdlineFile: []byte(Cmdline),
		InfoFile:    append(ib, '\n'),
	}); err != nil {
		return nil, err
	}
	return info, nil
}

// checkStatic refuses what cannot be /init: not an x86-64 ELF executable,
// or one that needs a dynamic loader (the initramfs has none).
func checkStatic(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("an ELF %s %s, want an x86-64 executable", f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("dynamically linked (build it with CGO_ENABLED=0)")
		}
	}
	return nil
}

// writeFiles writes every file to a temporary name in dir, then renames
// them all: a failure leaves no half-written file.
func writeFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var tmps []string
	defer func() {
		for _, t := range tmps {
			os.Remove(t)
		}
	}()
	names := map[string]string{}
	for name, b := range files {
		f, err := os.CreateTemp(dir, "."+name+".tmp")
		if err != nil {
			return err
		}
		tmps = append(tmps, f.Name())
		_, werr := f.Write(b)
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
		if err := os.Chmod(f.Name(), 0o644); err != nil {
			return err
		}
		names[name] = f.Name()
	}
	for name, t := range names {
		if err := os.Rename(t, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
		}
	}
	return nil
}
