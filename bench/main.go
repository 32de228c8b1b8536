// Command bench measures Castellan against baselines measured in the same
// run, and prints ratios:
//
//   - compute: Go and C builds of fannkuch, nbody and sha256 built
//     natively (also with GOMAXPROCS=1), under bare wazero
//     (bench/barewazero, wazero's own WASI), `castellan run` on wazero,
//     bare wasmtime (bench/barewasmtime, wasmtime's own WASI) and
//     `castellan run --engine wasmtime`, interleaved; the host layer should
//     cost at most 5% over the bare runner of its engine.
//   - cold start: a Go hello world with a warm compilation cache, whole
//     process, beside the native build and the bare runners.
//   - HTTP: requests per second of a Go and a C program on a listen
//     descriptor, plain and TLS, in keeps on both engines (one instance and
//     replicas = "auto") and built natively (one core and all cores).
//   - vm (only when asked: -only vm): a VM keep's start to its first
//     workload output, by phase, beside the same keep as a process.
//
// The wasmtime runners need cgo (-wasmtime=false leaves them out).
//
// Run it from the repository root: go run ./bench [-quick] [-json]
// With -json the tables go to stderr and every figure to stdout as JSON.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
)

var (
	quick     = flag.Bool("quick", false, "smaller workloads and fewer runs (a smoke test, not a measurement)")
	only      = flag.String("only", "compute,start,http,attest", "sections to run")
	httpDur   = flag.Duration("http-time", 5*time.Second, "load duration of each HTTP measurement")
	conns     = flag.Int("conns", 32, "concurrent HTTP connections")
	httpProgs = flag.String("http-programs", "go,c", "programs of the HTTP section: go (testdata/fixtures/go/httpbench), c (testdata/fixtures/c/httpbench.c)")
	runsFlag  = flag.Int("runs", 5, "runs of each compute workload per runner")
	withWT    = flag.Bool("wasmtime", true, "also measure the wasmtime engine (builds with cgo and -tags wasmtime)")
	jsonOut   = flag.Bool("json", false, "write every figure to stdout as JSON (the tables go to stderr)")
	langs     = flag.String("lang", "go,c", "languages of the compute workloads")
	cpuTime   = flag.Bool("cpu", false, "compute: measure CPU time (user+sys of the process) instead of wall time, which a loaded machine disturbs less")
)

type tools struct {
	dir, castellan, bare, cache string
	// castellanWT is castellan built with -tags wasmtime, bareWT the bare
	// wasmtime runner; both "" with -wasmtime=false.
	castellanWT, bareWT string
}

// figure is one measured number, as -json writes it.
type figure struct {
	Section  string  `json:"section"`
	Workload string  `json:"workload"`
	Runner   string  `json:"runner"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
}

var figures []figure

// record keeps a figure for -json.
func record(section, workload, runner, metric string, value float64, unit string) {
	figures = append(figures, figure{section, workload, runner, metric, value, unit})
}

func recordMS(section, workload, runner, metric string, d time.Duration) {
	record(section, workload, runner, metric, float64(d.Microseconds())/1000, "ms")
}

func main() {
	flag.Parse()
	stdout := os.Stdout
	if *jsonOut {
		// Every table line goes to stderr; stdout carries the JSON only.
		os.Stdout = os.Stderr
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: error:", err)
		os.Exit(1)
	}
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		host, _ := os.Hostname()
		if err := enc.Encode(map[string]any{
			"date": time.Now().UTC().Format(time.RFC3339), "host": host,
			"os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.NumCPU(), "go": runtime.Version(),
			"figures": figures,
		}); err != nil {
			fmt.Fprintln(os.Stderr, "bench: error:", err)
			os.Exit(1)
		}
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "castellan-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	t := &tools{dir: dir, castellan: filepath.Join(dir, "castellan"), bare: filepath.Join(dir, "barewazero"), cache: filepath.Join(dir, "cache")}
	fmt.Printf("# castellan bench, %s, %s/%s, %d CPUs, %s\n", time.Now().UTC().Format("2006-01-02"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version())
	step("building castellan and the bare wazero runner")
	if err := goBuild(t.castellan, "./cmd/castellan", nil); err != nil {
		return err
	}
	if err := goBuild(t.bare, "./bench/barewazero", nil); err != nil {
		return err
	}
	if *withWT {
		step("building castellan and the bare runner with wasmtime (cgo)")
		t.castellanWT, t.bareWT = filepath.Join(dir, "castellan-wasmtime"), filepath.Join(dir, "barewasmtime")
		for out, pkg := range map[string]string{t.castellanWT: "./cmd/castellan", t.bareWT: "./bench/barewasmtime"} {
			if err := goBuild(out, pkg, []string{"CGO_ENABLED=1"}, "-tags", "wasmtime"); err != nil {
				return fmt.Errorf("%w (leave wasmtime out with -wasmtime=false)", err)
			}
		}
	}
	for _, s := range strings.Split(*only, ",") {
		switch s {
		case "compute":
			err = compute(t)
		case "start":
			err = coldStart(t)
		case "http":
			err = httpBench(t)
		case "attest":
			err = attestBench(t)
		case "vm":
			err = vmBench(t)
		default:
			err = fmt.Errorf("unknown section %q", s)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func step(format string, a ...any) { fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...) }

func goBuild(out, pkg string, env []string, flags ...string) error {
	args := append([]string{"build", "-o", out}, flags...)
	cmd := exec.Command("go", append(args, pkg)...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// timeRun runs a command n times (after one unmeasured warm-up run that
// also fills compilation caches) and returns the sorted durations.
func timeRun(n int, name string, args ...string) ([]time.Duration, error) {
	return timeRunEnv(n, nil, name, args...)
}

// timeRunEnv is timeRun with extra environment variables.
func timeRunEnv(n int, env []string, name string, args ...string) ([]time.Duration, error) {
	var ds []time.Duration
	for i := -1; i < n; i++ {
		wall, _, err := timeOnce(env, name, args...)
		if err != nil {
			return nil, err
		}
		if i >= 0 {
			ds = append(ds, wall)
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds, nil
}

func median(ds []time.Duration) time.Duration { return ds[len(ds)/2] }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// timeOnce runs a command once and returns its wall time and the CPU
// time (user and system) of the process.
func timeOnce(env []string, name string, args ...string) (wall, cpu time.Duration, err error) {
	cmd := exec.Command(name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, 0, fmt.Errorf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
	}
	wall = time.Since(start)
	return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}

// runner is one way to run a workload: cmd gives the command line for the
// workload's argument.
type runner struct {
	name string
	env  []string
	cmd  func(arg string) []string
	// wasm runners also run the small argument, to tell their fixed cost.
	wasm bool
}

// wasmRunners are the four runners of a module, two when wasmtime is left
// out: bare wazero, castellan on wazero, bare wasmtime, castellan on
// wasmtime.
func (t *tools) wasmRunners(wasm string) []runner {
	rs := []runner{
		{name: "bare wazero", wasm: true, cmd: func(a string) []string { return []string{t.bare, "-cache", t.cache, wasm, a} }},
		{name: "castellan wazero", wasm: true, cmd: func(a string) []string {
			return []string{t.castellan, "run", "--cache-dir", t.cache, wasm, "--", a}
		}},
	}
	if t.castellanWT != "" {
		rs = append(rs,
			runner{name: "bare wasmtime", wasm: true, cmd: func(a string) []string { return []string{t.bareWT, "-cache", t.cache, wasm, a} }},
			runner{name: "castellan wasmtime", wasm: true, cmd: func(a string) []string {
				return []string{t.castellanWT, "run", "--engine", "wasmtime", "--cache-dir", t.cache, wasm, "--", a}
			}})
	}
	return rs
}

// nativeC is the compiler and optimisation level of the native C builds:
// those of the Wasm builds (internal/fixtures: clang -O2), so that a ratio
// measures the runtime, not a second compiler (gcc -O2 made this machine's
// sha256 16% faster and its nbody 2x slower than clang -O2 does).
var nativeC = []string{"clang", "-O2"}

// nativeBuild builds a fixture for this machine: go build, or nativeC.
func nativeBuild(t *tools, lang, name string) (string, error) {
	root, err := fixtures.RepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(t.dir, lang+"-"+name+"-native")
	if lang == "go" {
		return out, goBuild(out, filepath.Join(root, "testdata/fixtures/go", name), nil)
	}
	src := filepath.Join(root, "testdata/fixtures/c", name+".c")
	if b, err := exec.Command(nativeC[0], append(nativeC[1:], "-o", out, src, "-lm")...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s %s: %v\n%s", nativeC[0], src, err, b)
	}
	return out, nil
}

func compute(t *tools) error {
	// small is an argument that makes the same workload do almost nothing:
	// its time is the runner's fixed cost (process start, module load), so
	// that the compute cost of the host layer can be told apart from it.
	type job struct{ lang, name, arg, small string }
	jobs := []job{
		{"go", "fannkuch", "10", "3"}, {"go", "nbody", "2000000", "1"}, {"go", "sha256", "256", "0"},
		{"c", "fannkuch", "10", "3"}, {"c", "nbody", "2000000", "1"}, {"c", "sha256", "256", "0"},
	}
	var picked []job
	for _, j := range jobs {
		if strings.Contains(","+*langs+",", ","+j.lang+",") {
			picked = append(picked, j)
		}
	}
	jobs = picked
	runs := *runsFlag
	if *quick {
		jobs = []job{{"go", "fannkuch", "8", "3"}, {"c", "nbody", "100000", "1"}}
		runs = 1
	}
	metric, what := "min time", "wall time"
	if *cpuTime {
		metric, what = "min cpu time", "CPU time (user+sys)"
	}
	fmt.Printf("\n## compute: %s, min of %d whole-process runs, all runners interleaved\n\n", what, runs)
	fmt.Printf("\"compute ratio\" compares times less each runner's fixed cost (the same workload doing\n")
	fmt.Printf("almost nothing): castellan against the bare runner of the same engine.\n\n")
	var names []string
	for _, r := range t.wasmRunners("") {
		names = append(names, r.name)
	}
	fmt.Printf("| workload | native | native GOMAXPROCS=1 | %s | compute ratio wazero |", strings.Join(names, " | "))
	sep := "|---|---|---|" + strings.Repeat("---|", len(names)) + "---|"
	if t.castellanWT != "" {
		fmt.Printf(" compute ratio wasmtime | castellan wasmtime / native |")
		sep += "---|---|"
	}
	fmt.Printf("\n%s\n", sep)
	worst := map[string]float64{}
	for _, j := range jobs {
		step("compute %s/%s", j.lang, j.name)
		var wasm string
		var err error
		if j.lang == "go" {
			wasm, err = fixtures.BuildGo(j.name)
		} else {
			wasm, err = fixtures.BuildC(j.name)
		}
		if err != nil {
			return err
		}
		native, err := nativeBuild(t, j.lang, j.name)
		if err != nil {
			return err
		}
		runners := append([]runner{
			{name: "native", cmd: func(a string) []string { return []string{native, a} }},
			{name: "native GOMAXPROCS=1", env: []string{"GOMAXPROCS=1"}, cmd: func(a string) []string { return []string{native, a} }},
		}, t.wasmRunners(wasm)...)
		full, small := map[string]time.Duration{}, map[string]time.Duration{}
		// Interleave the runners so that drift in machine load hits all.
		for i := 0; i < runs; i++ {
			for _, r := range runners {
				args := []string{j.arg}
				if r.wasm {
					args = append(args, j.small)
				}
				for k, a := range args {
					c := r.cmd(a)
					wall, cpu, err := timeOnce(r.env, c[0], c[1:]...)
					if err != nil {
						return err
					}
					d := wall
					if *cpuTime {
						d = cpu
					}
					m := full
					if k == 1 {
						m = small
					}
					if old, ok := m[r.name]; !ok || d < old {
						m[r.name] = d
					}
				}
			}
		}
		workload := fmt.Sprintf("%s %s %s", j.lang, j.name, j.arg)
		row := []string{workload}
		for _, r := range runners {
			row = append(row, ms(full[r.name]))
			recordMS("compute", workload, r.name, metric, full[r.name])
			if r.wasm {
				recordMS("compute", workload, r.name, metric+" of the fixed cost", small[r.name])
			}
		}
		ratio := func(cast, bare string) float64 {
			return float64(full[cast]-small[cast]) / float64(full[bare]-small[bare])
		}
		engines := []string{"wazero"}
		if t.castellanWT != "" {
			engines = append(engines, "wasmtime")
		}
		for _, e := range engines {
			r := ratio("castellan "+e, "bare "+e)
			worst[e] = max(worst[e], r)
			row = append(row, fmt.Sprintf("%.3f", r))
			record("compute", workload, "castellan "+e, "compute ratio to bare "+e+" ("+what+")", r, "ratio")
		}
		if t.castellanWT != "" {
			r := float64(full["castellan wasmtime"]) / float64(full["native"])
			row = append(row, fmt.Sprintf("%.2f", r))
			record("compute", workload, "castellan wasmtime", "ratio to native ("+what+")", r, "ratio")
		}
		fmt.Printf("| %s |\n", strings.Join(row, " | "))
	}
	fmt.Printf("\nworst compute ratio to the bare runner: wazero %.3f", worst["wazero"])
	if t.castellanWT != "" {
		fmt.Printf(", wasmtime %.3f", worst["wasmtime"])
	}
	fmt.Printf(" (target at most 1.050)\n")
	return nil
}

func coldStart(t *tools) error {
	runs := 30
	if *quick {
		runs = 3
	}
	step("cold start")
	wasm, err := fixtures.BuildGo("hello")
	if err != nil {
		return err
	}
	native, err := nativeBuild(t, "go", "hello")
	if err != nil {
		return err
	}
	st, _ := os.Stat(wasm)
	fmt.Printf("\n## cold start: Go hello world (%.1f MB), warm compilation cache, median of %d whole-process runs, interleaved\n\n", float64(st.Size())/1e6, runs)
	fmt.Printf("| runner | median | min |\n|---|---|---|\n")
	runners := append([]runner{{name: "native", cmd: func(a string) []string { return []string{native, a} }}}, t.wasmRunners(wasm)...)
	// noArg is the command line of r with no workload argument.
	noArg := func(r runner) []string { c := r.cmd(""); return c[:len(c)-1] }
	ds := map[string][]time.Duration{}
	for _, r := range runners { // warm the caches
		c := noArg(r)
		if _, err := timeRun(0, c[0], c[1:]...); err != nil {
			return err
		}
	}
	for i := 0; i < runs; i++ {
		for _, r := range runners {
			c := noArg(r)
			d, err := timeRunEnv(1, r.env, c[0], c[1:]...)
			if err != nil {
				return err
			}
			ds[r.name] = append(ds[r.name], d[0])
		}
	}
	for _, r := range runners {
		d := ds[r.name]
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		fmt.Printf("| %s | %s | %s |\n", r.name, ms(median(d)), ms(d[0]))
		recordMS("start", "go hello", r.name, "median", median(d))
		recordMS("start", "go hello", r.name, "min", d[0])
	}
	fmt.Printf("\ncastellan cold start: wazero %s (target under 60 ms)", ms(median(ds["castellan wazero"])))
	if t.castellanWT != "" {
		fmt.Printf(", wasmtime %s (target 25 ms or less)", ms(median(ds["castellan wasmtime"])))
	}
	fmt.Println()
	return fixedStart(t, runs)
}

// fixedStart compares the CLI's own start-up, with no workload:
// `castellan version` against the bare wazero runner printing its usage
// (exit status 2), interleaved, wall and CPU time (user+sys).
func fixedStart(t *tools, runs int) error {
	cmds := []struct {
		name string
		argv []string
	}{
		{"bare wazero (usage)", []string{t.bare}},
		{"castellan version", []string{t.castellan, "version"}},
	}
	wall := map[string][]time.Duration{}
	cpu := map[string][]time.Duration{}
	for i := -1; i < runs; i++ {
		for _, c := range cmds {
			cmd := exec.Command(c.argv[0], c.argv[1:]...)
			start := time.Now()
			err := cmd.Run()
			d := time.Since(start)
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				return fmt.Errorf("%s: %v", c.name, err)
			}
			if i >= 0 {
				wall[c.name] = append(wall[c.name], d)
				cpu[c.name] = append(cpu[c.name], cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
			}
		}
	}
	fmt.Printf("\n## fixed start-up: no workload, median of %d runs, interleaved\n\n", runs)
	fmt.Printf("| command | wall median | wall min | CPU median |\n|---|---|---|---|\n")
	for _, c := range cmds {
		w, u := wall[c.name], cpu[c.name]
		sort.Slice(w, func(i, j int) bool { return w[i] < w[j] })
		sort.Slice(u, func(i, j int) bool { return u[i] < u[j] })
		fmt.Printf("| %s | %s | %s | %s |\n", c.name, ms(median(w)), ms(w[0]), ms(median(u)))
		recordMS("start", "none", c.name, "median", median(w))
		recordMS("start", "none", c.name, "cpu median", median(u))
	}
	over := median(wall[cmds[1].name]) - median(wall[cmds[0].name])
	fmt.Printf("\ncastellan's fixed start-up over bare wazero: %s (target 3 ms or less)\n", ms(over))
	return nil
}
