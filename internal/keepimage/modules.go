package keepimage

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ulikunitz/xz"
)

// Guest modules. Required ones must be built in or found; wanted ones are
// added when the kernel has them as modules (the TEE guest drivers, what
// configfs-tsm needs, and virtio-fs for the keep's volumes: Debian's cloud
// kernel has virtio-fs built in, so its images do not change).
var (
	RequiredModules = []string{"virtio_pci", "virtio_console"}
	WantedModules   = []string{"configfs", "tsm", "sev_guest", "tdx_guest", "fuse", "virtiofs"}
)

// Module is a kernel module file to load in the guest.
type Module struct {
	Name string // normalised name, e.g. "sev_guest"
	Path string // path in the modules folder, e.g. "kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz"
}

// File returns the module's file name in the initramfs.
func (m Module) File() string { return filepath.Base(m.Path) }

// modName returns the normalised module name of a .ko[.xz|.gz|.zst] path.
func modName(p string) string {
	b := filepath.Base(p)
	if i := strings.Index(b, ".ko"); i >= 0 {
		b = b[:i]
	}
	return strings.ReplaceAll(b, "-", "_")
}

// ResolveModules returns the modules to load, dependencies first, for the
// kernel whose modules folder is dir. It reads modules.builtin (built-in
// drivers need no file) and modules.dep (dependencies); without
// modules.dep (a package unpacked with dpkg-deb -x, never depmod'ed) it
// reads each module's own "depends=" from its .modinfo section.
func ResolveModules(dir string, required, wanted []string) ([]Module, error) {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			builtin[modName(l)] = true
		}
	} else {
		return nil, fmt.Errorf("modules folder %s: %w", dir, err)
	}
	paths := map[string]string{}  // name → relative path
	deps := map[string][]string{} // name → dependency names, when modules.dep exists
	if b, err := os.ReadFile(filepath.Join(dir, "modules.dep")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			mod, rest, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			n := modName(mod)
			paths[n] = mod
			for _, d := range strings.Fields(rest) {
				paths[modName(d)] = d
				deps[n] = append(deps[n], modName(d))
			}
			if deps[n] == nil {
				deps[n] = []string{}
			}
		}
	} else {
		err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
				rel, _ := filepath.Rel(dir, p)
				paths[modName(p)] = filepath.ToSlash(rel)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("modules folder %s: %w", dir, err)
		}
		deps = nil
	}
	var order []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(n string, chain []string) error
	visit = func(n string, chain []string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("modules: dependency loop %s", strings.Join(append(chain, n), " → "))
		case 2:
			return nil
		}
		if builtin[n] {
			state[n] = 2
			return nil
		}
		p, ok := paths[n]
		if !ok {
			return fmt.Errorf("modules: %s is neither built into the kernel nor in %s", n, dir)
		}
		state[n] = 1
		var ds []string
		if deps != nil {
			ds = deps[n]
		} else {
			var err error
			if ds, err = moduleDepends(filepath.Join(dir, p)); err != nil {
				return err
			}
		}
		for _, d := range ds {
			if err := visit(d, append(chain, n)); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, Module{Name: n, Path: p})
		return nil
	}
	for _, n := range required {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}
	for _, n := range wanted {
		if _, ok := paths[n]; ok || builtin[n] {
			if err := visit(n, nil); err != nil {
				return nil, err
			}
		}
	}
	seen := map[string]bool{}
	for _, m := range order {
		if seen[m.File()] {
			return nil, fmt.Errorf("modules: two modules with the file name %s", m.File())
		}
		seen[m.File()] = true
	}
	return order, nil
}

// maxModule bounds a decompressed module file.
const maxModule = 64 << 20

// ReadModuleELF returns a module file's ELF bytes, decompressing .xz and
// .gz.
func ReadModuleELF(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch {
	case strings.HasSuffix(path, ".xz"):
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case strings.HasSuffix(path, ".gz"):
		if r, err = gzip.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case strings.HasSuffix(path, ".ko"):
	default:
		return nil, fmt.Errorf("%s: a compression this build cannot read; run depmod so that modules.dep lists dependencies", path)
	}
	b, err := io.ReadAll(io.LimitReader(r, maxModule+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxModule {
		return nil, fmt.Errorf("%s: more than %d bytes", path, maxModule)
	}
	return b, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo.
func moduleDepends(path string) ([]string, error) {
	b, err := ReadModuleELF(path)
	if err != nil {
		return nil, err
	}
	ef, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sec := ef.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s: no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var out []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					out = append(out, strings.ReplaceAll(d, "-", "_"))
				}
			}
			return out, nil
		}
	}
	return nil, errors.New(path + ": no depends= in .modinfo")
}
