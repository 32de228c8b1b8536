package keep

import (
	"strings"
	"testing"
)

func TestCheckVolumes(t *testing.T) {
	for _, c := range []struct {
		name string
		vols []Volume
		want string // "" accepted
	}{
		{"none", nil, ""},
		{"two", []Volume{{Guest: "/data", Host: "/var/lib/x"}, {Guest: "/data/sub", Host: "/srv", ReadOnly: true}}, ""},
		{"relative guest", []Volume{{Guest: "data", Host: "/x"}}, `volume guest path "data" is not an absolute, clean path`},
		{"dot-dot guest", []Volume{{Guest: "/data/../etc", Host: "/x"}}, `volume guest path "/data/../etc" is not an absolute, clean path`},
		{"trailing slash", []Volume{{Guest: "/data/", Host: "/x"}}, "is not an absolute, clean path"},
		{"relative host", []Volume{{Guest: "/data", Host: "tmp"}}, `volume host path "tmp" is not an absolute, clean path`},
		{"dot-dot host", []Volume{{Guest: "/data", Host: "/tmp/../.."}}, "is not an absolute, clean path"},
		{"empty host", []Volume{{Guest: "/data"}}, `volume host path "" is not an absolute, clean path`},
		{"NUL", []Volume{{Guest: "/da\x00ta", Host: "/x"}}, "is not an absolute, clean path"},
		{"long", []Volume{{Guest: "/" + strings.Repeat("a", 4096), Host: "/x"}}, "is not an absolute, clean path"},
		{"guest root", []Volume{{Guest: "/", Host: "/x"}}, "volume guest path / is the workload's root"},
		{"twice", []Volume{{Guest: "/data", Host: "/x"}, {Guest: "/data", Host: "/y"}}, "volume guest path /data is given twice"},
		{"too many", make([]Volume, MaxVolumes+1), "65 volumes, more than 64"},
	} {
		err := CheckVolumes(c.vols)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
