package config

import (
	"errors"
	"reflect"
	"testing"
)

func TestBindSecrets(t *testing.T) {
	src := "[secrets]\nenv = [\"DB_PASSWORD\"]\n[[files]]\nkind = \"secret\"\nname = \"tls.key\"\n[[files]]\nkind = \"stdout\"\n"
	cases := []struct {
		name       string
		values     map[string]string
		missing    []string
		undeclared []string
	}{
		{"all supplied", map[string]string{"DB_PASSWORD": "pw", "tls.key": "KEY"}, nil, nil},
		{"one missing", map[string]string{"DB_PASSWORD": "pw"}, []string{"tls.key"}, nil},
		{"none supplied", nil, []string{"DB_PASSWORD", "tls.key"}, nil},
		{"one undeclared", map[string]string{"DB_PASSWORD": "pw", "tls.key": "K", "EXTRA": "x"}, nil, []string{"EXTRA"}},
		{"misspelt", map[string]string{"DB_PASSWROD": "pw", "tls.key": "K"}, []string{"DB_PASSWORD"}, []string{"DB_PASSWROD"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("s.toml", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			env, err := cfg.BindSecrets(c.values)
			if c.missing == nil && c.undeclared == nil {
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(env, map[string]string{"DB_PASSWORD": "pw"}) || string(cfg.Files[0].Secret) != "KEY" || cfg.Files[1].Secret != nil {
					t.Errorf("env %v, files %+v", env, cfg.Files)
				}
				return
			}
			var se *SecretsError
			if !errors.As(err, &se) || !reflect.DeepEqual(se.Missing, c.missing) || !reflect.DeepEqual(se.Undeclared, c.undeclared) {
				t.Fatalf("error %v (%+v), want missing %v undeclared %v", err, se, c.missing, c.undeclared)
			}
			if env != nil || cfg.Files[0].Secret != nil {
				t.Errorf("a refused binding set values: %v %q", env, cfg.Files[0].Secret)
			}
		})
	}
	// A workload without a config declares no secrets.
	var none *Config
	if _, err := none.BindSecrets(map[string]string{"A": "x"}); err == nil {
		t.Error("a nil config accepted a secret")
	}
	if env, err := none.BindSecrets(nil); err != nil || len(env) != 0 {
		t.Errorf("nil config, no secrets: %v %v", env, err)
	}
}

func TestDetachedOutputDefault(t *testing.T) {
	cfg, err := Parse("d.toml", []byte("args = []\n"))
	if err != nil || cfg.DetachedOutput != DetachedDiscard || Default().DetachedOutput != DetachedDiscard {
		t.Errorf("default detached output %q, %v", cfg.DetachedOutput, err)
	}
}
