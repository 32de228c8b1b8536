package cli

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/castellan-dev/castellan/internal/config"
)

// worldFlags are run's flags that add to the workload's world without a
// config, with wasmtime's spelling: preopened directories (--dir,
// --dir-ro) and environment variables (--env).
type worldFlags struct {
	dirs []dirFlag
	env  []envFlag
}

type dirFlag struct {
	arg      string // as given, for messages
	flag     string // "--dir" or "--dir-ro"
	host     string
	guest    string
	readOnly bool
}

type envFlag struct {
	arg        string
	key, value string
}

func addWorldFlags(fs *flag.FlagSet) *worldFlags {
	w := &worldFlags{}
	dir := func(name string, ro bool) func(string) error {
		return func(s string) error {
			host, guest, ok := strings.Cut(s, "::")
			if !ok {
				guest = host
			}
			if host == "" || guest == "" {
				return fmt.Errorf("%q: want HOST or HOST::GUEST", s)
			}
			w.dirs = append(w.dirs, dirFlag{arg: s, flag: "--" + name, host: host, guest: guest, readOnly: ro})
			return nil
		}
	}
	fs.Func("dir", "preopen the host folder HOST for the workload, as GUEST if given (HOST[::GUEST], repeatable)", dir("dir", false))
	fs.Func("dir-ro", "like --dir, read-only: the workload cannot change anything below it", dir("dir-ro", true))
	fs.Func("env", "set the workload's environment variable K to V (K=V, repeatable); K alone takes the value from castellan's environment", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if k == "" || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) {
			return fmt.Errorf("%q: want K=V with a non-empty K and no NUL byte", s)
		}
		if !ok {
			v, ok = os.LookupEnv(k)
			if !ok {
				return fmt.Errorf("%q: no value given and %s is not set in castellan's environment", s, k)
			}
		}
		w.env = append(w.env, envFlag{arg: s, key: k, value: v})
		return nil
	})
	return w
}

// apply checks the flags against each other and against cfg (nil when the
// workload has no config; cfgName names it in messages) and returns the
// directories to add after the config's descriptors and the variables to
// add to its environment. A guest folder or a variable named twice is an
// error that names both places.
func (w *worldFlags) apply(cfg *config.Config, cfgName string) ([]config.File, map[string]string, error) {
	var files []config.File
	guests := map[string]string{} // guest path -> where it was set
	if cfg != nil {
		for _, f := range cfg.Files {
			if f.Kind == config.KindDir {
				guests[f.Name] = fmt.Sprintf("the dir entry at %s:%d", cfgName, f.Line)
			}
		}
	}
	for _, d := range w.dirs {
		if prev, ok := guests[d.guest]; ok {
			return nil, nil, fmt.Errorf("%s %s: the guest folder %s is also %s", d.flag, d.arg, d.guest, prev)
		}
		guests[d.guest] = d.flag + " " + d.arg
		abs, err := filepath.Abs(d.host)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: %w", d.flag, d.arg, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return nil, nil, fmt.Errorf("%s %s: %w", d.flag, d.arg, err)
		}
		if !st.IsDir() {
			return nil, nil, fmt.Errorf("%s %s: %s is not a folder", d.flag, d.arg, d.host)
		}
		files = append(files, config.File{Kind: config.KindDir, Name: d.guest, Path: abs, ReadOnly: d.readOnly})
	}
	keys := map[string]string{}
	if cfg != nil {
		for k := range cfg.Env {
			keys[k] = "[env] in " + cfgName
		}
		for _, k := range cfg.SecretEnv {
			keys[k] = "[secrets] env in " + cfgName
		}
	}
	var env map[string]string
	for _, e := range w.env {
		if prev, ok := keys[e.key]; ok {
			return nil, nil, fmt.Errorf("--env %s: %s is also set by %s", e.arg, e.key, prev)
		}
		keys[e.key] = "--env " + e.arg
		if env == nil {
			env = map[string]string{}
		}
		env[e.key] = e.value
	}
	return files, env, nil
}
