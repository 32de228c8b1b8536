package policy

import (
	"net"
	"strings"
	"testing"
)

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

func TestIdentityLoadErrors(t *testing.T) {
	wl := `workloads = ["` + digestA + `"]` + "\n"
	ident := func(body string) string { return wl + "[[identity]]\nworkload = \"" + digestA + "\"\n" + body }
	tests := []struct{ name, policy, want string }{
		{"allow_sans = true", wl + "allow_sans = true\n", "allow_sans = true is no longer accepted"},
		{"trust domain with capitals", wl + "[spiffe]\ntrust_domain = \"Example.org\"\n", "spiffe.trust_domain"},
		{"trust domain with a port", wl + "[spiffe]\ntrust_domain = \"example.org:8\"\n", "spiffe.trust_domain"},
		{"path without /", wl + "[spiffe]\npath = \"workload\"\n", "spiffe.path"},
		{"path with an empty segment", wl + "[spiffe]\npath = \"/a//b\"\n", "empty segment"},
		{"path with an unknown placeholder", wl + "[spiffe]\npath = \"/{host}\"\n", `segment "{host}"`},
		{"path with a colon", wl + "[spiffe]\npath = \"/sha256:{digest}\"\n", "segment"},
		{"{name} without identities", wl + "[spiffe]\npath = \"/{name}\"\n", "has no [[identity]] with a name"},
		{"{name} and an identity without a name", wl + "[spiffe]\npath = \"/{name}\"\n[[identity]]\nworkload = \"" + digestA + "\"\n", "identity 1: no name"},
		{"identity for a workload not allowed", wl + "[[identity]]\nworkload = \"" + digestB + "\"\n", "is not in workloads"},
		{"identity twice", ident("") + "[[identity]]\nworkload = \"" + digestA + "\"\n", "identity 2: workload"},
		{"bad identity digest", wl + "[[identity]]\nworkload = \"x\"\n", "identity 1: workload \"x\""},
		{"bad name", ident("name = \"a b\"\n"), `name "a b"`},
		{"dns in capitals", ident("dns = [\"Web.example\"]\n"), `dns "Web.example"`},
		{"dns wildcard in the middle", ident("dns = [\"a.*.example\"]\n"), `dns "a.*.example"`},
		{"dns wildcard over a TLD", ident("dns = [\"*.com\"]\n"), `dns "*.com"`},
		{"dns partial wildcard", ident("dns = [\"w*.example.com\"]\n"), `dns "w*.example.com"`},
		{"bad ip", ident("ips = [\"10.0.0.256\"]\n"), `"10.0.0.256" is not an IP`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse("p.toml", []byte(tt.policy), "m.toml", nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "p.toml") {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestIdentity(t *testing.T) {
	s, err := parse("p.toml", []byte(`workloads = ["`+digestA+`", "`+digestB+`"]
[spiffe]
trust_domain = "prod.example"
path = "/ns/{name}/sha256/{digest}"
[[identity]]
workload = "`+digestA+`"
name = "web"
dns = ["web.example", "*.web.example"]
ips = ["192.0.2.1"]
[[identity]]
workload = "`+digestB+`"
name = "db"
`), "m.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.SPIFFEID(digestA)
	if err != nil || id.String() != "spiffe://prod.example/ns/web/sha256/"+strings.Repeat("a", 64) {
		t.Errorf("SPIFFE ID %v, %v", id, err)
	}
	ok := []struct {
		dns []string
		ips []string
	}{{nil, nil}, {[]string{"web.example", "x.web.example"}, []string{"192.0.2.1"}}, {[]string{"*.web.example"}, nil}}
	for _, c := range ok {
		if err := s.CheckNames(digestA, c.dns, ips(c.ips)); err != nil {
			t.Errorf("%v %v: %v", c.dns, c.ips, err)
		}
	}
	for _, c := range []struct {
		wl       string
		dns, ips []string
	}{
		{digestB, []string{"web.example"}, nil},
		{digestA, []string{"x.y.web.example"}, nil},
		{digestA, []string{"-.web.example"}, nil},
		{digestA, nil, []string{"192.0.2.2"}},
	} {
		if err := s.CheckNames(c.wl, c.dns, ips(c.ips)); err == nil {
			t.Errorf("%s may claim %v %v", c.wl, c.dns, c.ips)
		}
	}
}

func ips(s []string) []net.IP {
	var out []net.IP
	for _, a := range s {
		out = append(out, net.ParseIP(a))
	}
	return out
}
