package policy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
)

func TestSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(dir, name), mode)
	}
	write("pw", "hunter2", 0o600)
	write("open", "x", 0o644)
	write("big", strings.Repeat("x", maxSecretBytes+1), 0o600)
	d1, d2 := "sha256:"+strings.Repeat("a", 64), "sha256:"+strings.Repeat("b", 64)
	m := strings.Repeat("11", 48)
	head := "workloads = [\"any\"]\n"
	good := head + `
[[secret]]
resource = "default/db/password"
file = "pw"
workloads = ["` + d1 + `"]
platforms = ["snp"]

[[secret]]
resource = "coco/key/1"
file = "pw"
measurements = ["` + m + `"]
`
	pf := filepath.Join(dir, "p.toml")
	s, err := parse(pf, []byte(good), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	meas := bytes.Repeat([]byte{0x11}, 48)
	for _, c := range []struct {
		path   string
		claims evidence.Claims
		want   string // "" = released
	}{
		{"default/db/password", evidence.Claims{Platform: "snp", WorkloadDigest: d1}, ""},
		{"default/db/password", evidence.Claims{Platform: "snp", WorkloadDigest: d2}, "not released to workload " + d2},
		{"default/db/password", evidence.Claims{Platform: "tdx", WorkloadDigest: d1}, "not released on platform tdx"},
		{"default/db/password", evidence.Claims{Platform: "snp"}, "(none bound)"},
		{"coco/key/1", evidence.Claims{Platform: "tdx", Measurement: meas}, ""},
		{"coco/key/1", evidence.Claims{Platform: "tdx", Measurement: make([]byte, 48), WorkloadDigest: d1}, "not released to measurement"},
		{"default/db/nope", evidence.Claims{Platform: "snp", WorkloadDigest: d1}, "no secret kbs:///default/db/nope"},
	} {
		v, r := s.Release(c.path, &c.claims)
		switch {
		case c.want == "" && (r != nil || string(v) != "hunter2"):
			t.Errorf("%s %+v: %v", c.path, c.claims, r)
		case c.want != "" && (r == nil || r.Check != CheckSecret || !strings.Contains(r.Reason, c.want) || strings.Contains(r.Reason, "hunter2")):
			t.Errorf("%s %+v: %v, want %q", c.path, c.claims, r, c.want)
		}
	}
	// The value handed out is a copy.
	v, _ := s.Release("coco/key/1", &evidence.Claims{Measurement: meas})
	v[0] = 'X'
	if v, _ := s.Release("coco/key/1", &evidence.Claims{Measurement: meas}); string(v) != "hunter2" {
		t.Error("the release shares the snapshot's bytes")
	}

	for name, c := range map[string]struct{ body, want string }{
		"bad resource":   {`resource = "a/../b"` + "\nfile = \"pw\"\nworkloads = [\"" + d1 + `"]`, "secret 1: resource"},
		"duplicate":      {`resource = "a/b/c"` + "\nfile = \"pw\"\nworkloads = [\"" + d1 + "\"]\n[[secret]]\nresource = \"a/b/c\"\nfile = \"pw\"\nworkloads = [\"" + d1 + `"]`, "secret 2: resource a/b/c is listed twice"},
		"unbound":        {`resource = "a/b/c"` + "\nfile = \"pw\"", "names no workloads and no measurements"},
		"bad digest":     {`resource = "a/b/c"` + "\nfile = \"pw\"\nworkloads = [\"any\"]", `workloads: "any" is not a sha256`},
		"bad platform":   {`resource = "a/b/c"` + "\nfile = \"pw\"\nworkloads = [\"" + d1 + "\"]\nplatforms = [\"sev\"]", `unknown platform "sev"`},
		"bad meas":       {`resource = "a/b/c"` + "\nfile = \"pw\"\nmeasurements = [\"zz\"]", `"zz" is not a measurement`},
		"no file":        {`resource = "a/b/c"` + "\nworkloads = [\"" + d1 + `"]`, "has no file"},
		"missing file":   {`resource = "a/b/c"` + "\nfile = \"gone\"\nworkloads = [\"" + d1 + `"]`, "no such file"},
		"group-readable": {`resource = "a/b/c"` + "\nfile = \"open\"\nworkloads = [\"" + d1 + `"]`, "chmod 600"},
		"too big":        {`resource = "a/b/c"` + "\nfile = \"big\"\nworkloads = [\"" + d1 + `"]`, "is over 65536 bytes"},
		"unknown key":    {`resource = "a/b/c"` + "\nvalue = \"hunter2\"\nworkloads = [\"" + d1 + `"]`, "p.toml:5: unknown key secret.value"},
	} {
		_, err := parse(pf, []byte(head+"\n[[secret]]\n"+c.body+"\n"), "m.toml", nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
}
