package keepimage

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestVirtiofsModules: a kernel with virtio-fs as a module gets it (and
// fuse, first) into the image; one with it built in gets no file.
func TestVirtiofsModules(t *testing.T) {
	for _, tc := range []struct {
		name, builtin string
		want          []string
	}{
		{"modules", "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\n", []string{"fuse", "virtiofs"}},
		{"built in", "kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/char/virtio_console.ko\nkernel/fs/fuse/fuse.ko\nkernel/fs/fuse/virtiofs.ko\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files := map[string]string{"modules.builtin": tc.builtin, "modules.dep": ""}
			if tc.want != nil {
				files["modules.dep"] = "kernel/fs/fuse/virtiofs.ko: kernel/fs/fuse/fuse.ko\nkernel/fs/fuse/fuse.ko:\n"
				files["kernel/fs/fuse/virtiofs.ko"] = "virtiofs module"
				files["kernel/fs/fuse/fuse.ko"] = "fuse module"
			}
			for name, body := range files {
				p := filepath.Join(dir, name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte(body), 0o644)
			}
			mods, err := ResolveModules(dir, RequiredModules, WantedModules)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, m := range mods {
				got = append(got, m.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("modules %v, want %v", got, tc.want)
			}
		})
	}
}
