package config

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/castellan-dev/castellan/internal/workload"
)

// MaxConfigSize bounds the config files Load reads.
const MaxConfigSize = 1 << 20

// Bounds of the [limits] table.
const (
	PageSize     = 64 << 10 // one Wasm page
	MaxPages     = 65536    // 4 GiB, all of wasm32's address space
	MaxOpenFiles = 1 << 20
)

// Error is a problem in a config file. Its text is one line,
// "FILE:LINE: problem" (or "FILE: problem" when no line applies).
type Error struct {
	File string
	Line int    // 0 when unknown
	Key  string // the key at fault, dotted ("files[2].port"), may be empty
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Load reads and parses the config file at path. Relative dir paths and
// ca_file paths are resolved against the file's folder. raw is the file's
// bytes, which the workload digest covers.
func Load(path string) (cfg *Config, raw []byte, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	raw, err = io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(raw) > MaxConfigSize {
		return nil, nil, &Error{File: path, Msg: fmt.Sprintf("config is larger than %d bytes", MaxConfigSize)}
	}
	cfg, err = Parse(path, raw)
	if err != nil {
		return nil, nil, err
	}
	cfg.ResolvePaths(filepath.Dir(path))
	return cfg, raw, nil
}

// ResolvePaths makes relative dir paths and ca_file paths absolute against
// dir (the config's folder).
func (c *Config) ResolvePaths(dir string) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		if d, err := filepath.Abs(filepath.Join(dir, p)); err == nil {
			return d
		}
		return filepath.Join(dir, p)
	}
	for i := range c.Files {
		c.Files[i].Path = abs(c.Files[i].Path)
		c.Files[i].CAFile = abs(c.Files[i].CAFile)
	}
}

// Argv is the workload's argument vector: "main.wasm" then Args, as Enarx.
func (c *Config) Argv() []string {
	return append([]string{"main.wasm"}, c.Args...)
}

// Environ is the workload's environment as Enarx builds it: FD_COUNT and
// FD_NAMES, then the [env] entries sorted by key.
func (c *Config) Environ() []string {
	names := make([]string, len(c.Files))
	for i, f := range c.Files {
		names[i] = f.Name
	}
	env := []string{
		fmt.Sprintf("FD_COUNT=%d", len(c.Files)),
		"FD_NAMES=" + strings.Join(names, ":"),
	}
	keys := make([]string, 0, len(c.Env))
	for k := range c.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+c.Env[k])
	}
	return env
}

// Parse parses a workload config. filename names the config in messages.
// Errors are *Error values; warnings (lenient readings of Enarx files) go in
// Config.Warnings in the same "FILE:LINE: ..." form.
func Parse(filename string, data []byte) (*Config, error) {
	var root map[string]any
	if err := toml.Unmarshal(data, &root); err != nil {
		return nil, decodeError(filename, err)
	}
	p := &parser{file: filename, pos: scanPositions(data), cfg: &Config{DetachedOutput: DetachedDiscard}}
	if err := p.top(root); err != nil {
		return nil, err
	}
	return p.cfg, nil
}

func decodeError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		return &Error{File: file, Line: line, Key: strings.Join(de.Key(), "."), Msg: "invalid TOML: " + oneLine(msg)}
	}
	return &Error{File: file, Msg: "invalid TOML: " + oneLine(strings.TrimPrefix(err.Error(), "toml: "))}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

type parser struct {
	file string
	pos  positions
	cfg  *Config
}

// at builds an error at the line of the key path.
func (p *parser) at(key []string, format string, a ...any) error {
	return &Error{File: p.file, Line: p.pos.line(key...), Key: dotted(key), Msg: oneLine(fmt.Sprintf(format, a...))}
}

func (p *parser) warn(key []string, format string, a ...any) {
	e := &Error{File: p.file, Line: p.pos.line(key...), Msg: oneLine(fmt.Sprintf(format, a...))}
	p.cfg.Warnings = append(p.cfg.Warnings, e.Error())
}

// dotted renders a path for Error.Key: files[2].port.
func dotted(key []string) string {
	var b strings.Builder
	for _, k := range key {
		if strings.HasPrefix(k, "\x01") {
			b.WriteString("[" + k[1:] + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(k)
	}
	return b.String()
}

// sortedKeys returns the keys of m in document order (by line, then name).
func (p *parser) sortedKeys(prefix []string, m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		li := p.pos.line(append(clone(prefix), keys[i])...)
		lj := p.pos.line(append(clone(prefix), keys[j])...)
		if li != lj {
			return li < lj
		}
		return keys[i] < keys[j]
	})
	return keys
}

func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	default:
		return "a date or time"
	}
}

func (p *parser) top(root map[string]any) error {
	for _, k := range p.sortedKeys(nil, root) {
		v := root[k]
		key := []string{k}
		switch k {
		case "steward":
			s, ok := v.(string)
			if !ok {
				return p.at(key, "steward must be a string, not %s", typeName(v))
			}
			u, err := url.Parse(s)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return p.at(key, "steward %q is not an https URL", s)
			}
			p.cfg.Steward = s
		case "steward_ca":
			s, ok := v.(string)
			if _, err := workload.ParseDigest(s); !ok || err != nil {
				return p.at(key, "steward_ca must be \"sha256:\" and the 64 lowercase hex digits of the SHA-256 of a CA certificate's DER, not %s", quoted(v))
			}
			p.cfg.StewardCA = s
		case "args":
			a, ok := v.([]any)
			if !ok {
				return p.at(key, "args must be an array of strings, not %s", typeName(v))
			}
			p.cfg.Args = []string{}
			for i, e := range a {
				s, ok := e.(string)
				if !ok {
					return p.at([]string{k, idx(i)}, "args[%d] must be a string, not %s", i, typeName(e))
				}
				if strings.ContainsRune(s, 0) {
					return p.at([]string{k, idx(i)}, "args[%d] contains a NUL byte", i)
				}
				p.cfg.Args = append(p.cfg.Args, s)
			}
		case "env":
			m, ok := v.(map[string]any)
			if !ok {
				return p.at(key, "env must be a table of strings, not %s", typeName(v))
			}
			p.cfg.Env = map[string]string{}
			for _, name := range p.sortedKeys(key, m) {
				ek := []string{k, name}
				s, ok := m[name].(string)
				if !ok {
					return p.at(ek, "env.%s must be a string, not %s", name, typeName(m[name]))
				}
				if name == "" || strings.ContainsAny(name, "=\x00") {
					return p.at(ek, "env name %q is empty or contains '=' or NUL", name)
				}
				if strings.ContainsRune(s, 0) {
					return p.at(ek, "env.%s contains a NUL byte", name)
				}
				if name == "FD_COUNT" || name == "FD_NAMES" {
					return p.at(ek, "env.%s is set by the runtime from [[files]]", name)
				}
				p.cfg.Env[name] = s
			}
		case "files":
			a, ok := v.([]any)
			if !ok {
				return p.at(key, "files must be an array of tables ([[files]]), not %s", typeName(v))
			}
			p.cfg.Files = []File{}
			for i, e := range a {
				m, ok := e.(map[string]any)
				if !ok {
					return p.at([]string{k, idx(i)}, "files[%d] must be a table, not %s", i, typeName(e))
				}
				f, err := p.file1(i, m)
				if err != nil {
					return err
				}
				p.cfg.Files = append(p.cfg.Files, f)
			}
			if err := p.checkNames(); err != nil {
				return err
			}
		case "limits":
			m, ok := v.(map[string]any)
			if !ok {
				return p.at(key, "limits must be a table, not %s", typeName(v))
			}
			if err := p.limits(m); err != nil {
				return err
			}
		case "secrets":
			m, ok := v.(map[string]any)
			if !ok {
				return p.at(key, "secrets must be a table ([secrets] with env = [...]), not %s", typeName(v))
			}
			if err := p.secrets(m); err != nil {
				return err
			}
		case "replicas":
			switch v := v.(type) {
			case string:
				if v != "auto" {
					return p.at(key, "replicas must be a number of instances or \"auto\", not %q", v)
				}
				p.cfg.Replicas = ReplicasAuto
			case int64:
				if v < 1 || v > MaxReplicas {
					return p.at(key, "replicas %d is out of range 1-%d", v, MaxReplicas)
				}
				p.cfg.Replicas = int(v)
			default:
				return p.at(key, "replicas must be a number of instances or \"auto\", not %s", typeName(v))
			}
		case "detached_output":
			s, ok := v.(string)
			if !ok || (s != DetachedDiscard && s != DetachedHost) {
				return p.at(key, "detached_output must be \"discard\" or \"host\", not %s", quoted(v))
			}
			p.cfg.DetachedOutput = s
		default:
			p.warn(key, "unknown top-level key %q ignored (Enarx accepted it; check the spelling)", k)
		}
	}
	if err := p.checkSecrets(); err != nil {
		return err
	}
	if n := p.cfg.Limits.MaxOpenFiles; n > 0 && n < len(p.cfg.Files) {
		return p.at([]string{"limits", "open_files"}, "limits.open_files %d is fewer than the %d descriptors in [[files]]", n, len(p.cfg.Files))
	}
	return nil
}

// keysOf lists which keys each kind accepts.
var keysOf = map[Kind][]string{
	KindNull:    {"kind", "name"},
	KindStdin:   {"kind", "name"},
	KindStdout:  {"kind", "name"},
	KindStderr:  {"kind", "name"},
	KindListen:  {"kind", "name", "prot", "addr", "port", "host"},
	KindConnect: {"kind", "name", "prot", "host", "port", "ca_file"},
	KindDir:     {"kind", "name", "path", "readonly"},
	KindSecret:  {"kind", "name"},
}

func (p *parser) file1(i int, m map[string]any) (File, error) {
	base := []string{"files", idx(i)}
	key := func(k string) []string { return append(clone(base), k) }
	f := File{Line: p.pos.line(base...)}
	kv, ok := m["kind"]
	if !ok {
		return f, p.at(base, "files[%d] has no kind (one of null, stdin, stdout, stderr, listen, connect, dir, secret)", i)
	}
	ks, ok := kv.(string)
	if !ok {
		return f, p.at(key("kind"), "files[%d].kind must be a string, not %s", i, typeName(kv))
	}
	f.Kind = Kind(ks)
	allowed, ok := keysOf[f.Kind]
	if !ok {
		return f, p.at(key("kind"), "files[%d]: unknown kind %q (want null, stdin, stdout, stderr, listen, connect, dir or secret)", i, ks)
	}
	for _, k := range p.sortedKeys(base, m) {
		found := false
		for _, a := range allowed {
			found = found || a == k
		}
		if !found {
			return f, p.at(key(k), "files[%d]: unknown key %q in a %s entry", i, k, f.Kind)
		}
	}
	str := func(k string) (string, bool, error) {
		v, ok := m[k]
		if !ok {
			return "", false, nil
		}
		s, isStr := v.(string)
		if !isStr {
			return "", true, p.at(key(k), "files[%d].%s must be a string, not %s", i, k, typeName(v))
		}
		if strings.ContainsRune(s, 0) {
			return "", true, p.at(key(k), "files[%d].%s contains a NUL byte", i, k)
		}
		return s, true, nil
	}
	name, hasName, err := str("name")
	if err != nil {
		return f, err
	}
	f.Name = name
	if hasName && name == "" {
		return f, p.at(key("name"), "files[%d].name is empty", i)
	}
	switch f.Kind {
	case KindNull, KindStdin, KindStdout, KindStderr:
		if !hasName {
			f.Name = string(f.Kind)
		}
	case KindListen, KindConnect:
		prot, hasProt, err := str("prot")
		if err != nil {
			return f, err
		}
		switch {
		case !hasProt:
			prot = ProtTLS
		case prot != ProtTCP && prot != ProtTLS:
			return f, p.at(key("prot"), "files[%d].prot %q is neither \"tcp\" nor \"tls\"", i, prot)
		}
		f.Prot = prot
		if f.Kind == KindListen {
			if !hasName {
				return f, p.at(base, "files[%d]: a listen entry needs a name", i)
			}
			addr, hasAddr, err := str("addr")
			if err != nil {
				return f, err
			}
			host, hasHost, err := str("host")
			if err != nil {
				return f, err
			}
			if hasHost {
				if hasAddr {
					return f, p.at(key("host"), "files[%d]: a listen entry has both addr and host (host is an old alias of addr)", i)
				}
				if host == "" {
					return f, p.at(key("host"), "files[%d].host is empty", i)
				}
				p.warn(key("host"), "host in listen entry %q is read as addr (Enarx rejects it; write addr)", f.Name)
				addr, hasAddr = host, true
			}
			if hasAddr && addr == "" {
				return f, p.at(key("addr"), "files[%d].addr is empty", i)
			}
			if !hasAddr {
				addr = "::"
			}
			f.Addr = addr
		} else {
			host, hasHost, err := str("host")
			if err != nil {
				return f, err
			}
			if !hasHost || host == "" {
				return f, p.at(base, "files[%d]: a connect entry needs a host", i)
			}
			f.Host = host
			if !hasName {
				f.Name = host
				if strings.Contains(host, ":") {
					return f, p.at(key("host"), "files[%d]: connect host %q contains ':', so the entry needs a name", i, host)
				}
			}
			ca, hasCA, err := str("ca_file")
			if err != nil {
				return f, err
			}
			if hasCA {
				if ca == "" {
					return f, p.at(key("ca_file"), "files[%d].ca_file is empty", i)
				}
				if prot != ProtTLS {
					return f, p.at(key("ca_file"), "files[%d].ca_file needs prot = \"tls\"", i)
				}
				f.CAFile = ca
			}
		}
		if !hasProt {
			p.warn(base, "%s entry %q has no prot; using \"tls\" (Enarx requires prot)", f.Kind, f.Name)
		}
		f.Port = 80
		if prot == ProtTLS {
			f.Port = 443
		}
		if v, ok := m["port"]; ok {
			n, isInt := v.(int64)
			if !isInt {
				return f, p.at(key("port"), "files[%d].port must be an integer, not %s", i, typeName(v))
			}
			if n < 1 || n > 65535 {
				return f, p.at(key("port"), "files[%d].port %d is out of range 1-65535", i, n)
			}
			f.Port = uint16(n)
		}
	case KindSecret:
		if !hasName {
			return f, p.at(base, "files[%d]: a secret entry needs a name (the name of the secret the deployer supplies)", i)
		}
		if !secretName().MatchString(name) {
			return f, p.at(key("name"), "files[%d].name %q is not a secret name (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')", i, name)
		}
	case KindDir:
		if !hasName {
			return f, p.at(base, "files[%d]: a dir entry needs a name (the guest path, for example \"/data\")", i)
		}
		for _, part := range strings.Split(name, "/") {
			if part == ".." {
				return f, p.at(key("name"), "files[%d].name %q contains \"..\"", i, name)
			}
		}
		path, hasPath, err := str("path")
		if err != nil {
			return f, err
		}
		if !hasPath || path == "" {
			return f, p.at(base, "files[%d]: a dir entry needs a path (the host directory)", i)
		}
		f.Path = path
		if v, ok := m["readonly"]; ok {
			b, isBool := v.(bool)
			if !isBool {
				return f, p.at(key("readonly"), "files[%d].readonly must be a boolean, not %s", i, typeName(v))
			}
			f.ReadOnly = b
		}
	}
	if strings.Contains(f.Name, ":") {
		return f, p.at(key("name"), "files[%d].name %q contains ':' (FD_NAMES is ':'-separated)", i, f.Name)
	}
	return f, nil
}

func (p *parser) checkNames() error {
	seen := map[string]int{}
	for i, f := range p.cfg.Files {
		if j, dup := seen[f.Name]; dup {
			k := []string{"files", idx(i), "name"}
			return p.at(k, "files[%d]: name %q is already used by files[%d] (line %d)", i, f.Name, j, p.cfg.Files[j].Line)
		}
		seen[f.Name] = i
	}
	return nil
}

// intIn reads the integer of key, which must be from 1 to max.
func (p *parser) intIn(key []string, v any, max int64) (int, error) {
	name := strings.Join(key, ".")
	n, ok := v.(int64)
	if !ok {
		return 0, p.at(key, "%s must be an integer, not %s", name, typeName(v))
	}
	if n < 1 || n > max {
		return 0, p.at(key, "%s %d is out of range 1-%d", name, n, max)
	}
	return int(n), nil
}

func (p *parser) limits(m map[string]any) error {
	for _, k := range p.sortedKeys([]string{"limits"}, m) {
		key := []string{"limits", k}
		v := m[k]
		switch k {
		case "memory":
			n, err := sizeValue(v)
			if err != nil {
				return p.at(key, "limits.memory: %v", err)
			}
			if n == 0 {
				return p.at(key, "limits.memory must be more than 0")
			}
			pages := (n + PageSize - 1) / PageSize
			if pages > MaxPages {
				return p.at(key, "limits.memory %d bytes is more than 4 GiB, the most a wasm32 module can address", n)
			}
			p.cfg.Limits.MemoryPages = uint32(pages)
		case "max_output":
			n, err := sizeValue(v)
			if err != nil {
				return p.at(key, "limits.max_output: %v", err)
			}
			if n == 0 {
				return p.at(key, "limits.max_output must be more than 0")
			}
			p.cfg.Limits.MaxOutput = int64(n)
		case "wall_time":
			s, ok := v.(string)
			if !ok {
				return p.at(key, "limits.wall_time must be a duration string such as \"30s\", not %s", typeName(v))
			}
			d, err := time.ParseDuration(s)
			if err != nil {
				return p.at(key, "limits.wall_time %q is not a duration such as \"30s\" or \"5m\"", s)
			}
			if d <= 0 {
				return p.at(key, "limits.wall_time %q must be more than 0", s)
			}
			p.cfg.Limits.WallTime = d
		case "open_files":
			n, err := p.intIn(key, v, MaxOpenFiles)
			if err != nil {
				return err
			}
			p.cfg.Limits.MaxOpenFiles = n
		case "vm_memory":
			n, err := sizeValue(v)
			if err != nil {
				return p.at(key, "limits.vm_memory: %v", err)
			}
			if n < MinVMMemory || n > MaxVMMemory {
				return p.at(key, "limits.vm_memory %d bytes is out of range 128MiB-1TiB", n)
			}
			// QEMU sizes RAM in MiB: round up.
			p.cfg.Limits.VMMemory = int64((n + 1<<20 - 1) &^ (1<<20 - 1))
		case "vcpus":
			n, err := p.intIn(key, v, MaxVCPUs)
			if err != nil {
				return err
			}
			p.cfg.Limits.VCPUs = n
		default:
			return p.at(key, "unknown key %q in [limits] (want memory, wall_time, max_output, open_files, vm_memory or vcpus)", k)
		}
	}
	return nil
}
