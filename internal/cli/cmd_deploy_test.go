package cli

import (
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/packages"
)

func TestKeepName(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct{ ref, want string }{
		{"hello:1", "hello:1"},
		{"registry.example/app:1.0", "registry.example/app:1.0"},
		{"hello@" + d, "hello@sha256:0123456789ab"},
		{"registry.example:5000/org/team/app@" + d, "app@sha256:0123456789ab"},
		{"registry.example/app:1.0@" + d, "app@sha256:0123456789ab"},
		{"oci-layout:/srv/packages/app@" + d, "app@sha256:0123456789ab"},
		{"oci-layout:relative/dir@" + d, "dir@sha256:0123456789ab"},
		{"registry.example/a/very/deep/path/of/repositories/app:" + strings.Repeat("t", 60), "app:" + strings.Repeat("t", 60)},
		{"registry.example/app:" + strings.Repeat("t", 100), "app:" + strings.Repeat("t", 60)},
		{"oci-layout:" + strings.Repeat("é", 40) + "@" + d, strings.Repeat("é", 22) + "@sha256:0123456789ab"},
	} {
		ref, err := packages.ParseRef(tc.ref)
		if err != nil {
			t.Fatalf("%s: %v", tc.ref, err)
		}
		got := keepName(ref)
		if got != tc.want || len(got) > maxKeepName || checkKeepName(got) != nil {
			t.Errorf("keepName(%s) = %q (%d bytes), want %q", tc.ref, got, len(got), tc.want)
		}
	}
}

func TestCheckKeepName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"my-app", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"tab\there", false},
		{"nul\x00", false},
	} {
		if err := checkKeepName(tc.name); (err == nil) != tc.ok {
			t.Errorf("checkKeepName(%q) = %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
