package qemu

import (
	"strings"
	"testing"
)

// TestArgsGoldenVolumes: each kind of VM with two volumes. A plain VM and
// a TD get their RAM in a shared memfd (the daemons map it); an SEV-SNP
// VM has one already. The devices of a confidential VM use its bounce
// buffers. Without volumes the command lines are TestArgsGolden's.
func TestArgsGoldenVolumes(t *testing.T) {
	base := goldenBase()
	base.FS = volumeFS(base.Dir, 2)
	for _, tc := range goldenKinds {
		t.Run(tc.name, func(t *testing.T) {
			m := base
			tc.mod(&m)
			checkGolden(t, &m, tc.name+"-volumes")
		})
	}
}

func TestArgsVolumesRefused(t *testing.T) {
	ok := Machine{Accel: AccelTCG, Kernel: "k", Initrd: "i", MemoryBytes: 512 << 20, VCPUs: 1, Dir: "/d",
		FS: []FS{{Tag: "vol0", Socket: "/d/volume0.sock"}}}
	for _, tc := range []struct {
		name, want string
		fs         FS
	}{
		{"no tag", `virtio-fs tag ""`, FS{Socket: "/d/s"}},
		{"tag with a comma", `virtio-fs tag "a,b"`, FS{Tag: "a,b", Socket: "/d/s"}},
		{"tag twice", `virtio-fs tag "vol0" given twice`, FS{Tag: "vol0", Socket: "/d/s"}},
		{"socket with a comma", "holds a comma", FS{Tag: "vol1", Socket: "/d/s,server=on"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := ok
			m.FS = append(append([]FS(nil), ok.FS...), tc.fs)
			if _, err := m.Args(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}
