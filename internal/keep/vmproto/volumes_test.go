package vmproto

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/keep"
)

// TestLaunchRequestVolumes: a launch request's volumes carry a tag, a
// guest path and a read-only flag, bounded and checked; no host path.
func TestLaunchRequestVolumes(t *testing.T) {
	many := make([]Volume, keep.MaxVolumes+1)
	for i := range many {
		many[i] = Volume{Tag: fmt.Sprintf("vol%d", i), Guest: fmt.Sprintf("/v%d", i)}
	}
	for _, tc := range []struct {
		name string
		vols []Volume
		want string
	}{
		{"two", []Volume{{Tag: "vol0", Guest: "/config", ReadOnly: true}, {Tag: "vol1", Guest: "/data"}}, ""},
		{"the most", many[:keep.MaxVolumes], ""},
		{"too many", many, "65 volumes, more than 64"},
		{"no tag", []Volume{{Guest: "/data"}}, `volume tag ""`},
		{"tag with a slash", []Volume{{Tag: "../etc", Guest: "/data"}}, `volume tag "../etc"`},
		{"tag with a comma", []Volume{{Tag: "a,b", Guest: "/data"}}, `volume tag "a,b"`},
		{"long tag", []Volume{{Tag: strings.Repeat("a", 37), Guest: "/data"}}, "volume tag"},
		{"tag twice", []Volume{{Tag: "vol0", Guest: "/a"}, {Tag: "vol0", Guest: "/b"}}, `volume tag "vol0" given twice`},
		{"relative guest path", []Volume{{Tag: "vol0", Guest: "data"}}, `volume guest path "data" is not an absolute, clean path`},
		{"unclean guest path", []Volume{{Tag: "vol0", Guest: "/a/../etc"}}, "not an absolute, clean path"},
		{"guest root", []Volume{{Tag: "vol0", Guest: "/"}}, "volume guest path / is the workload's root"},
		{"guest path twice", []Volume{{Tag: "vol0", Guest: "/a"}, {Tag: "vol1", Guest: "/a"}}, "volume guest path /a is given twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := testRequest()
			r.Volumes = tc.vols
			b, _ := json.Marshal(r)
			got, err := ParseLaunchRequest(b)
			if tc.want == "" {
				if err != nil || len(got.Volumes) != len(tc.vols) {
					t.Fatalf("%v, %d volumes", err, len(got.Volumes))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "launch request: ") {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
	// A host path is no field of a volume: refused as an unknown field.
	b := []byte(`{"backend":"nil","nonce":"bg==","digest":"sha256:` + strings.Repeat("0", 64) + `","client_key":"` +
		strings.Repeat("A", 43) + `=","attach_timeout_ms":1000,"volumes":[{"tag":"vol0","guest":"/data","host":"/etc"}]}`)
	if _, err := ParseLaunchRequest(b); err == nil || !strings.Contains(err.Error(), "host") {
		t.Fatalf("a volume with a host path: %v", err)
	}
}

// FuzzLaunchRequestVolumes: whatever the bytes, a request that parses has
// volumes the guest can mount safely: valid tags (a folder name under
// VolumeMountDir) and clean absolute guest paths.
func FuzzLaunchRequestVolumes(f *testing.F) {
	r := testRequest()
	r.Volumes = []Volume{{Tag: "vol0", Guest: "/config", ReadOnly: true}, {Tag: "vol1", Guest: "/data"}}
	good, _ := json.Marshal(r)
	f.Add(good)
	f.Add([]byte(strings.Replace(string(good), `"vol1"`, `".."`, 1)))
	f.Add([]byte(strings.Replace(string(good), `"/data"`, `"/config"`, 1)))
	f.Add([]byte(strings.Replace(string(good), `"volumes":[`, `"volumes":[{"tag":"x","guest":"/x","readonly":1},`, 1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := ParseLaunchRequest(in)
		if err != nil {
			return
		}
		for _, v := range req.Volumes {
			dir := path.Join(VolumeMountDir, v.Tag)
			if !ValidVolumeTag(v.Tag) || path.Dir(dir) != VolumeMountDir || path.Clean(v.Guest) != v.Guest || !path.IsAbs(v.Guest) || v.Guest == "/" {
				t.Fatalf("accepted volume %+v", v)
			}
		}
	})
}
