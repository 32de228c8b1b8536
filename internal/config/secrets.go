package config

import (
	"fmt"

	"github.com/castellan-dev/castellan/internal/kbs"
	"regexp"
	"sort"
	"strings"
	"sync"
)

// Secrets are values a workload needs that its config must not hold: the
// config is part of the package and its digest, which may be public. The
// config only declares them, and the deployer supplies the values at
// deploy time (to the attested keep, over the delivery channel):
//
//	[secrets]
//	env = ["DB_PASSWORD"]   # environment variables
//
//	[[files]]
//	kind = "secret"         # a read-only file held in the keep's memory
//	name = "tls.key"
//
// Every declared secret is required, and a value for a name the config
// does not declare is refused: a typo must not silently leave a workload
// without its secret, nor hand it one it did not ask for.

var (
	envName    = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`) })
	secretName = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`) })
)

// ValidSecretName reports whether s may name a secret (an environment
// variable name or a secret file entry's name).
func ValidSecretName(s string) bool { return secretName().MatchString(s) }

func (p *parser) secrets(m map[string]any) error {
	for _, k := range p.sortedKeys([]string{"secrets"}, m) {
		key := []string{"secrets", k}
		if k == "kbs" {
			if err := p.secretRefs(m[k]); err != nil {
				return err
			}
			continue
		}
		if k != "env" {
			return p.at(key, "unknown key %q in [secrets] (want env or kbs; secret files are [[files]] entries with kind = \"secret\")", k)
		}
		a, ok := m[k].([]any)
		if !ok {
			return p.at(key, "secrets.env must be an array of environment variable names, not %s", typeName(m[k]))
		}
		p.cfg.SecretEnv = []string{}
		seen := map[string]bool{}
		for i, e := range a {
			ek := []string{"secrets", "env", idx(i)}
			s, ok := e.(string)
			if !ok {
				return p.at(ek, "secrets.env[%d] must be a string, not %s", i, typeName(e))
			}
			if !envName().MatchString(s) || len(s) > 128 {
				return p.at(ek, "secrets.env[%d] %q is not an environment variable name", i, s)
			}
			if s == "FD_COUNT" || s == "FD_NAMES" {
				return p.at(ek, "secrets.env[%d]: %s is set by the runtime from [[files]]", i, s)
			}
			if seen[s] {
				return p.at(ek, "secrets.env[%d]: %s is declared twice", i, s)
			}
			seen[s] = true
			p.cfg.SecretEnv = append(p.cfg.SecretEnv, s)
		}
	}
	return nil
}

// secretRefs parses [secrets.kbs]: declared secret names mapped to
// kbs:///repo/type/tag references, fetched by the keep after attestation
// instead of being supplied at deploy.
func (p *parser) secretRefs(v any) error {
	t, ok := v.(map[string]any)
	if !ok {
		return p.at([]string{"secrets", "kbs"}, "secrets.kbs must be a table of secret names and kbs:/// references, not %s", typeName(v))
	}
	p.cfg.SecretRefs = map[string]string{}
	for _, name := range p.sortedKeys([]string{"secrets", "kbs"}, t) {
		key := []string{"secrets", "kbs", name}
		s, ok := t[name].(string)
		if !ok {
			return p.at(key, "secrets.kbs.%s must be a kbs:/// reference string, not %s", name, typeName(t[name]))
		}
		ref, err := kbs.ParseRef(s)
		if err != nil {
			return p.at(key, "secrets.kbs.%s: %v", name, err)
		}
		p.cfg.SecretRefs[name] = ref.String()
	}
	return nil
}

// checkSecrets runs once the whole file is read: a secret environment
// variable must not also have a value in [env], names are unique across
// environment and file secrets (the deployer names them alike), and each
// [secrets.kbs] name is a declared secret.
func (p *parser) checkSecrets() error {
	declared := map[string]bool{}
	for _, n := range p.cfg.SecretNames() {
		declared[n] = true
	}
	for _, name := range p.sortedKeys([]string{"secrets", "kbs"}, anyMap(p.cfg.SecretRefs)) {
		if !declared[name] {
			return p.at([]string{"secrets", "kbs", name}, "secrets.kbs.%s: no secret of that name is declared (in secrets.env or a [[files]] entry with kind = \"secret\")", name)
		}
	}
	if len(p.cfg.SecretRefs) > 0 && p.cfg.StewardCA == "" {
		p.warn([]string{"secrets", "kbs"}, "secrets.kbs: no steward_ca pins the secret service's TLS roots, so the host that runs the keep chooses them and could answer with values of its own (it cannot read the real ones)")
	}
	for i, name := range p.cfg.SecretEnv {
		k := []string{"secrets", "env", idx(i)}
		if _, ok := p.cfg.Env[name]; ok {
			return p.at(k, "secrets.env[%d]: %s also has a value in [env] (line %d); a secret's value is supplied at deploy time, not written in the config", i, name, p.pos.line("env", name))
		}
		for j, f := range p.cfg.Files {
			if f.Kind == KindSecret && f.Name == name {
				return p.at(k, "secrets.env[%d]: %s is also the name of the secret file files[%d] (line %d)", i, name, j, f.Line)
			}
		}
	}
	return nil
}

func quoted(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return typeName(v)
}

// SecretNames lists the secrets the config declares, sorted: environment
// variables and secret files. A nil config declares none.
func (c *Config) SecretNames() []string {
	if c == nil {
		return nil
	}
	names := append([]string(nil), c.SecretEnv...)
	for _, f := range c.Files {
		if f.Kind == KindSecret {
			names = append(names, f.Name)
		}
	}
	sort.Strings(names)
	return names
}

// SecretsError is a mismatch between the secrets a config declares and
// those supplied.
type SecretsError struct {
	Missing    []string // declared, not supplied
	Undeclared []string // supplied, not declared
	Fetched    []string // supplied, but fetched by the keep ([secrets.kbs])
}

func (e *SecretsError) Error() string {
	var parts []string
	if len(e.Missing) > 0 {
		parts = append(parts, "the config declares secrets that were not supplied: "+strings.Join(e.Missing, ", "))
	}
	if len(e.Undeclared) > 0 {
		parts = append(parts, "secrets were supplied that the config does not declare: "+strings.Join(e.Undeclared, ", "))
	}
	if len(e.Fetched) > 0 {
		parts = append(parts, "secrets were supplied that the keep fetches by kbs:/// reference ([secrets.kbs]): "+strings.Join(e.Fetched, ", "))
	}
	return strings.Join(parts, "; ")
}

func anyMap(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// CheckSecrets compares the names of the secrets a deployer supplies with
// those the config declares: every declared one must be supplied, except
// those [secrets.kbs] fetches, and nothing else.
func (c *Config) CheckSecrets(supplied []string) error {
	var skip map[string]string
	if c != nil {
		skip = c.SecretRefs
	}
	return c.checkSecretNames(supplied, skip)
}

func (c *Config) checkSecretNames(supplied []string, skip map[string]string) error {
	declared := map[string]bool{}
	for _, n := range c.SecretNames() {
		if _, ok := skip[n]; !ok {
			declared[n] = true
		}
	}
	e := &SecretsError{}
	given := map[string]bool{}
	for _, n := range supplied {
		given[n] = true
		if _, fetched := skip[n]; fetched {
			e.Fetched = append(e.Fetched, n)
		} else if !declared[n] {
			e.Undeclared = append(e.Undeclared, n)
		}
	}
	for _, n := range c.SecretNames() {
		if _, ok := skip[n]; !given[n] && !ok {
			e.Missing = append(e.Missing, n)
		}
	}
	if len(e.Missing) == 0 && len(e.Undeclared) == 0 && len(e.Fetched) == 0 {
		return nil
	}
	sort.Strings(e.Undeclared)
	sort.Strings(e.Fetched)
	return e
}

// BindSecrets checks values against the declared secrets (every one,
// those fetched from [secrets.kbs] included), puts the contents of secret
// files into their entries (File.Secret) and returns the secret
// environment values, to be added after the config's env. A nil config
// accepts no secrets.
func (c *Config) BindSecrets(values map[string]string) (env map[string]string, err error) {
	names := make([]string, 0, len(values))
	for n := range values {
		names = append(names, n)
	}
	if err := c.checkSecretNames(names, nil); err != nil {
		return nil, err
	}
	if c == nil {
		return nil, nil
	}
	env = map[string]string{}
	for _, n := range c.SecretEnv {
		env[n] = values[n]
	}
	for i := range c.Files {
		if c.Files[i].Kind == KindSecret {
			c.Files[i].Secret = []byte(values[c.Files[i].Name])
		}
	}
	return env, nil
}
