package keepimage

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/ulikunitz/xz"
)

// fakeKernel is the smallest bzImage KernelRelease accepts.
func fakeKernel(release string) []byte {
	b := make([]byte, 0x400)
	b[0x1fe], b[0x1ff] = 0x55, 0xaa
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x20e:], 0x100) // string at 0x300
	copy(b[0x300:], release+" (builder@example) #1 SMP\x00")
	return b
}

// fakeELF is a static x86-64 ELF header without program headers.
func fakeELF(machine uint16, interp bool) []byte {
	b := make([]byte, 64+56)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2) // ET_EXEC
	le.PutUint16(b[18:], machine)
	le.PutUint32(b[20:], 1)
	le.PutUint16(b[52:], 64) // ehsize
	if interp {
		le.PutUint64(b[32:], 64) // phoff
		le.PutUint16(b[54:], 56) // phentsize
		le.PutUint16(b[56:], 1)  // phnum
		le.PutUint32(b[64:], 3)  // PT_INTERP
	}
	return b
}

// fakeTree writes a kernel, a modules folder with modules.dep and a
// castellan binary under root.
func fakeTree(t *testing.T, root string) Options {
	t.Helper()
	rel := "6.1.0-99-cloud-amd64"
	mods := filepath.Join(root, "lib", "modules", rel)
	files := map[string]string{
		"modules.builtin": "kernel/drivers/virtio/virtio_pci.ko\nkernel/fs/configfs/configfs.ko\n",
		"modules.dep": "kernel/drivers/char/virtio_console.ko:\n" +
			"kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz: kernel/drivers/virt/coco/tsm.ko\n" +
			"kernel/drivers/virt/coco/tsm.ko:\n" +
			"kernel/drivers/net/unrelated.ko:\n",
		"kernel/drivers/char/virtio_console.ko": "console module",
		"kernel/drivers/virt/coco/tsm.ko":       "tsm module",
		"kernel/drivers/net/unrelated.ko":       "not wanted",
	}
	for name, body := range files {
		p := filepath.Join(mods, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeXZ(t, filepath.Join(mods, "kernel/drivers/virt/coco/sev-guest/sev-guest.ko.xz"), []byte("sev module"))
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	kernel := filepath.Join(root, "boot", "vmlinuz-"+rel)
	os.WriteFile(kernel, fakeKernel(rel), 0o644)
	bin := filepath.Join(root, "castellan")
	os.WriteFile(bin, fakeELF(62, false), 0o755)
	return Options{Kernel: kernel, Castellan: bin}
}

func readAll(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			out[strings.TrimPrefix(p, dir)] = b
		}
		return nil
	})
	return out
}

// TestBuildDeterministic builds the same inputs, placed in two different
// folders, into two image folders: the files are byte-identical.
func TestBuildDeterministic(t *testing.T) {
	var images []map[string][]byte
	for range 2 {
		o := fakeTree(t, t.TempDir())
		o.Out = filepath.Join(t.TempDir(), "image")
		info, err := Build(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(info.Modules, []string{"virtio_console", "tsm", "sev_guest"}) {
			t.Fatalf("modules %v", info.Modules)
		}
		images = append(images, readAll(t, o.Out))
	}
	if len(images[0]) != 4 {
		t.Fatalf("files %v", images[0])
	}
	for name, b := range images[0] {
		if !bytes.Equal(b, images[1][name]) {
			t.Errorf("%s differs between two builds", name)
		}
	}
	if string(images[0]["/cmdline"]) != Cmdline || strings.HasSuffix(Cmdline, "\n") {
		t.Fatalf("cmdline %q", images[0]["/cmdline"])
	}
	var info Info
	if err := json.Unmarshal(images[0]["/image.json"], &info); err != nil || info.Kernel.Release != "6.1.0-99-cloud-amd64" || info.Castellan.Source != "given" {
		t.Fatalf("image.json %s (%v)", images[0]["/image.json"], err)
	}
	checkInitrd(t, images[0]["/initrd"])
}

// checkInitrd checks the archive's fixed fields and contents.
func checkInitrd(t *testing.T, b []byte) {
	t.Helper()
	// gzip: no FNAME/FCOMMENT/FEXTRA flags, mtime 0.
	if b[0] != 0x1f || b[1] != 0x8b || b[3] != 0 || binary.LittleEndian.Uint32(b[4:]) != 0 {
		t.Fatalf("gzip header % x", b[:10])
	}
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	cr := cpio.NewReader(zr)
	var names []string
	for {
		h, err := cr.Next()
		if err != nil {
			break
		}
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Guid, h.ModTime)
		}
		names = append(names, h.Name)
	}
	want := []string{"dev", "etc", "etc/castellan", "etc/castellan/modules", "init", "lib", "lib/modules",
		"lib/modules/sev_guest.ko", "lib/modules/tsm.ko", "lib/modules/virtio_console.ko", "proc", "sys", "tmp"}
	if !slices.Equal(names, want) {
		t.Fatalf("entries %q", names)
	}
	entries, err := ReadInitramfs(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name {
		case "etc/castellan/modules":
			if string(e.Data) != "virtio_console.ko\ntsm.ko\nsev_guest.ko\n" {
				t.Errorf("module order %q", e.Data)
			}
		case "lib/modules/sev_guest.ko":
			if string(e.Data) != "sev module" {
				t.Errorf("sev_guest.ko not decompressed: %q", e.Data)
			}
		case "init":
			if e.Mode != 0o755 {
				t.Errorf("init mode %o", e.Mode)
			}
		}
	}
}

func TestWriteInitramfsOrderIndependent(t *testing.T) {
	a := []Entry{{Name: "b/x", Mode: 0o644, Data: []byte("1")}, {Name: "a", Mode: 0o755, Data: []byte("2")}}
	b := []Entry{a[1], a[0]}
	var ba, bb bytes.Buffer
	if err := WriteInitramfs(&ba, a); err != nil {
		t.Fatal(err)
	}
	if err := WriteInitramfs(&bb, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ba.Bytes(), bb.Bytes()) {
		t.Fatal("entry order changed the archive")
	}
}

func TestWriteInitramfsRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []Entry
		want    string
	}{
		{"dot dot", []Entry{{Name: "../etc/passwd"}}, "bad entry name"},
		{"absolute", []Entry{{Name: "lib/../../x"}}, "bad entry name"},
		{"empty", []Entry{{Name: ""}}, "bad entry name"},
		{"double slash", []Entry{{Name: "a//b"}}, "bad entry name"},
		{"duplicate", []Entry{{Name: "a"}, {Name: "/a"}}, "two entries"},
		{"file and folder", []Entry{{Name: "a"}, {Name: "a/b"}}, "file and a folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := WriteInitramfs(&buf, tc.entries)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBuildRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(o *Options, root string)
		want string
	}{
		{"not a kernel", func(o *Options, root string) { os.WriteFile(o.Kernel, []byte("MZ not linux"), 0o644) }, "not a Linux bzImage"},
		{"no kernel file", func(o *Options, root string) { o.Kernel = filepath.Join(root, "nope") }, "kernel"},
		{"no modules folder", func(o *Options, root string) { os.RemoveAll(filepath.Join(root, "lib")) }, "no modules folder"},
		{"required module missing", func(o *Options, root string) {
			os.WriteFile(filepath.Join(root, "lib/modules/6.1.0-99-cloud-amd64/modules.builtin"), nil, 0o644)
		}, "virtio_pci is neither built into the kernel"},
		{"dependency loop", func(o *Options, root string) {
			os.WriteFile(filepath.Join(root, "lib/modules/6.1.0-99-cloud-amd64/modules.dep"),
				[]byte("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n"), 0o644)
			os.WriteFile(filepath.Join(root, "lib/modules/6.1.0-99-cloud-amd64/modules.builtin"),
				[]byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644)
			os.WriteFile(filepath.Join(root, "lib/modules/6.1.0-99-cloud-amd64/modules.dep"),
				[]byte("kernel/virtio_console.ko: kernel/tsm.ko\nkernel/tsm.ko: kernel/virtio_console.ko\n"), 0o644)
		}, "dependency loop"},
		{"castellan not ELF", func(o *Options, root string) { os.WriteFile(o.Castellan, []byte("#!/bin/sh\n"), 0o755) }, "not an ELF"},
		{"castellan for arm64", func(o *Options, root string) { os.WriteFile(o.Castellan, fakeELF(183, false), 0o755) }, "want an x86-64"},
		{"castellan dynamic", func(o *Options, root string) { os.WriteFile(o.Castellan, fakeELF(62, true), 0o755) }, "dynamically linked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			o := fakeTree(t, root)
			o.Out = filepath.Join(t.TempDir(), "image")
			tc.mod(&o, root)
			_, err := Build(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if _, serr := os.Stat(o.Out); serr == nil {
				if ents, _ := os.ReadDir(o.Out); len(ents) > 0 {
					t.Fatalf("a failed build left %d files", len(ents))
				}
			}
		})
	}
}

func TestKernelRelease(t *testing.T) {
	if r, err := KernelRelease(fakeKernel("6.12.117+deb12-cloud-amd64")); err != nil || r != "6.12.117+deb12-cloud-amd64" {
		t.Fatalf("%q %v", r, err)
	}
	bad := fakeKernel("x")
	binary.LittleEndian.PutUint16(bad[0x20e:], 0xffff)
	for _, b := range [][]byte{nil, make([]byte, 0x400), bad, fakeKernel("")} {
		if _, err := KernelRelease(b); err == nil {
			t.Fatal("accepted a bad kernel")
		}
	}
}

// TestRealKernelModules resolves the guest's modules of a real unpacked
// Debian kernel package (no modules.dep: dependencies from .modinfo).
func TestRealKernelModules(t *testing.T) {
	if os.Getenv(KernelDirEnv) == "" {
		t.Skipf("%s is not set (scripts/test sets it)", KernelDirEnv)
	}
	_, mods, err := FindKernel()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ResolveModules(mods, RequiredModules, WantedModules)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 {
		t.Fatal("no modules")
	}
	pos := map[string]int{}
	for i, m := range got {
		pos[m.Name] = i
	}
	// Every dependency that is a file loads before its user.
	for i, m := range got {
		deps, err := moduleDepends(filepath.Join(mods, m.Path))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range deps {
			if j, ok := pos[d]; ok && j > i {
				t.Fatalf("%s loads before its dependency %s: %v", m.Name, d, got)
			}
		}
	}
	t.Logf("modules: %v", got)
}

func writeXZ(t *testing.T, path string, data []byte) {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
