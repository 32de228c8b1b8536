package config

import (
	"os"
	"testing"
)

// TestSecretRefs: a deployer supplies only the secrets [secrets.kbs] does
// not fetch; the keep binds all of them, fetched ones included.
func TestSecretRefs(t *testing.T) {
	b, err := os.ReadFile("testdata/secrets_kbs.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse("secrets_kbs.toml", b)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		supplied []string
		ok       bool
	}{
		{[]string{"API_TOKEN"}, true},
		{nil, false},
		{[]string{"API_TOKEN", "DB_PASSWORD"}, false}, // fetched, not supplied
	} {
		if err := cfg.CheckSecrets(c.supplied); (err == nil) != c.ok {
			t.Errorf("CheckSecrets(%v) = %v", c.supplied, err)
		}
	}
	err = cfg.CheckSecrets([]string{"API_TOKEN", "DB_PASSWORD"})
	if err == nil || err.Error() != "secrets were supplied that the keep fetches by kbs:/// reference ([secrets.kbs]): DB_PASSWORD" {
		t.Errorf("supplying a fetched secret: %v", err)
	}
	if _, err := cfg.BindSecrets(map[string]string{"API_TOKEN": "a"}); err == nil {
		t.Error("BindSecrets without the fetched secrets succeeded")
	}
	env, err := cfg.BindSecrets(map[string]string{"API_TOKEN": "a", "DB_PASSWORD": "b", "tls.key": "c"})
	if err != nil || env["DB_PASSWORD"] != "b" || string(cfg.Files[0].Secret) != "c" {
		t.Errorf("BindSecrets: %v %v", env, err)
	}
}
