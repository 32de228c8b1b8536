package delivery

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVolumesRefused: the keep refuses volumes whose paths are not
// absolute and clean, guest paths given twice or that the config already
// names, and host paths that are not folders; nothing runs.
func TestVolumesRefused(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	art := load(t, "c", "hello", []byte(stdio))
	for _, c := range []struct {
		name string
		vols []Volume
		want string
	}{
		{"relative guest", []Volume{{Guest: "data", Host: dir}}, `volume guest path "data" is not an absolute, clean path`},
		{"dot-dot guest", []Volume{{Guest: "/data/../etc", Host: dir}}, `volume guest path "/data/../etc" is not an absolute, clean path`},
		{"relative host", []Volume{{Guest: "/data", Host: "tmp"}}, `volume host path "tmp" is not an absolute, clean path`},
		{"dot-dot host", []Volume{{Guest: "/data", Host: dir + "/../.."}}, "is not an absolute, clean path"},
		{"NUL", []Volume{{Guest: "/da\x00ta", Host: dir}}, "is not an absolute, clean path"},
		{"guest root", []Volume{{Guest: "/", Host: dir}}, "volume guest path / is the workload's root"},
		{"twice", []Volume{{Guest: "/data", Host: dir}, {Guest: "/data", Host: dir}}, "volume guest path /data is given twice"},
		{"too many", make([]Volume, MaxVolumes+1), "65 volumes, more than 64"},
		{"host file", []Volume{{Guest: "/data", Host: file}}, "volume /data: host path " + file + " is not a folder"},
		{"host missing", []Volume{{Guest: "/data", Host: filepath.Join(dir, "missing")}}, "volume /data: stat "},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The client checks the manifest too: the keep's check is
			// exercised with the manifest the client would have sent.
			m := Manifest{Digest: art.Digest.String(), WasmSize: 1, ConfigSize: -1, Volumes: c.vols}
			err := m.check()
			if err == nil {
				k, sess, v := pair(t, art.Digest.String())
				var out syncBuf
				_, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: art, Volumes: c.vols, Stdout: &out})
				if !errors.Is(kerr, ErrRefused) || out.String() != "" {
					t.Errorf("keep: %v, output %q", kerr, out.String())
				}
				if re := (*RefusedError)(nil); !errors.As(err, &re) || !strings.Contains(re.Reason, c.want) {
					t.Errorf("client: %v, want %q", err, c.want)
				}
				return
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("manifest: %v, want %q", err, c.want)
			}
		})
	}
	// The config's own descriptor names are not volume paths.
	named := load(t, "c", "hello", []byte("[[files]]\nkind = \"stdin\"\nname = \"/data\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"))
	k, sess, v := pair(t, named.Digest.String())
	_, err, _, kerr := run(t, k, sess, v, Delivery{Artifact: named, Volumes: []Volume{{Guest: "/data", Host: dir}}})
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(re.Reason, "volume /data: the config already names a descriptor /data") || !errors.Is(kerr, ErrRefused) {
		t.Errorf("client: %v; keep: %v", err, kerr)
	}
}
