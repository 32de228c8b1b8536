// Command bench measures Castellan against baselines measured in the same
// run, and prints ratios:
//
//   - compute: Go and C builds of fannkuch, nbody and sha256 under
//     `castellan run` and under bare wazero (bench/barewazero, wazero's own
//     WASI); the host layer should cost at most 5%.
//   - cold start: a Go hello world with a warm compilation cache, whole
//     process, beside the native build and bare wazero.
//   - HTTP: requests per second of one Go program on a listen descriptor,
//     plain and TLS, in a keep and built natively.
//   - vm (only when asked: -only vm): a VM keep's start to its first
//     workload output, by phase, beside the same keep as a process.
//
// Run it from the repository root: go run ./bench [-quick]
package main

import (
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
	quick   = flag.Bool("quick", false, "smaller workloads and fewer runs (a smoke test, not a measurement)")
	only    = flag.String("only", "compute,start,http,attest", "sections to run")
	httpDur = flag.Duration("http-time", 5*time.Second, "load duration of each HTTP measurement")
	conns   = flag.Int("conns", 32, "concurrent HTTP connections")
)

type tools struct {
	dir, castellan, bare, cache string
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench: error:", err)
		os.Exit(1)
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

func goBuild(out, pkg string, env []string) error {
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// timeRun runs a command n times (after one unmeasured warm-up run that
// also fills compilation caches) and returns the sorted durations.
func timeRun(n int, name string, args ...string) ([]time.Duration, error) {
	var ds []time.Duration
	for i := -1; i < n; i++ {
		cmd := exec.Command(name, args...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
		}
		if i >= 0 {
			ds = append(ds, time.Since(start))
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds, nil
}

func median(ds []time.Duration) time.Duration { return ds[len(ds)/2] }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func compute(t *tools) error {
	// small is an argument that makes the same workload do almost nothing:
	// its time is the runner's fixed cost (process start, module load), so
	// that the compute cost of the host layer can be told apart from it.
	type job struct{ lang, name, arg, small string }
	jobs := []job{
		{"go", "fannkuch", "10", "3"}, {"go", "nbody", "2000000", "1"}, {"go", "sha256", "256", "0"},
		{"c", "fannkuch", "10", "3"}, {"c", "nbody", "2000000", "1"}, {"c", "sha256", "256", "0"},
	}
	runs := 5
	if *quick {
		jobs = []job{{"go", "fannkuch", "8", "3"}, {"c", "nbody", "100000", "1"}}
		runs = 1
	}
	fmt.Printf("\n## compute: castellan run vs bare wazero (min of %d runs, whole process)\n\n", runs)
	fmt.Printf("\"start\" is the same workload doing almost nothing (fixed cost of the runner);\n")
	fmt.Printf("\"compute ratio\" compares the times less that fixed cost.\n\n")
	fmt.Printf("| workload | bare wazero | castellan | whole ratio | bare start | castellan start | compute ratio |\n|---|---|---|---|---|---|---|\n")
	worst := 0.0
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
		// Interleave the runners so that drift in machine load hits both.
		var bare, cast, bareStart, castStart []time.Duration
		for i := 0; i < runs; i++ {
			for _, m := range []struct {
				out  *[]time.Duration
				bare bool
				arg  string
			}{{&bare, true, j.arg}, {&cast, false, j.arg}, {&bareStart, true, j.small}, {&castStart, false, j.small}} {
				var d []time.Duration
				if m.bare {
					d, err = timeRun(1, t.bare, "-cache", t.cache, wasm, m.arg)
				} else {
					d, err = timeRun(1, t.castellan, "run", "--cache-dir", t.cache, wasm, "--", m.arg)
				}
				if err != nil {
					return err
				}
				*m.out = append(*m.out, d[0])
			}
		}
		b, c, bs, cs := minOf(bare), minOf(cast), minOf(bareStart), minOf(castStart)
		r := float64(c-cs) / float64(b-bs)
		if r > worst {
			worst = r
		}
		fmt.Printf("| %s %s %s | %s | %s | %.3f | %s | %s | %.3f |\n", j.lang, j.name, j.arg, ms(b), ms(c), float64(c)/float64(b), ms(bs), ms(cs), r)
	}
	fmt.Printf("\nworst compute ratio %.3f (target at most 1.050)\n", worst)
	return nil
}

func minOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
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
	root, err := fixtures.RepoRoot()
	if err != nil {
		return err
	}
	native := filepath.Join(t.dir, "hello-native")
	if err := goBuild(native, filepath.Join(root, "testdata/fixtures/go/hello"), nil); err != nil {
		return err
	}
	st, _ := os.Stat(wasm)
	fmt.Printf("\n## cold start: Go hello world (%.1f MB), warm compilation cache, median of %d whole-process runs\n\n", float64(st.Size())/1e6, runs)
	fmt.Printf("| runner | median | min |\n|---|---|---|\n")
	type row struct {
		name string
		cmd  []string
	}
	var castMedian time.Duration
	for _, r := range []row{
		{"native (go build)", []string{native}},
		{"bare wazero", []string{t.bare, "-cache", t.cache, wasm}},
		{"castellan run", []string{t.castellan, "run", "--cache-dir", t.cache, wasm}},
	} {
		ds, err := timeRun(runs, r.cmd[0], r.cmd[1:]...)
		if err != nil {
			return err
		}
		if strings.HasPrefix(r.name, "castellan") {
			castMedian = median(ds)
		}
		fmt.Printf("| %s | %s | %s |\n", r.name, ms(median(ds)), ms(ds[0]))
	}
	fmt.Printf("\ncastellan cold start %s (target under 60 ms)\n", ms(castMedian))
	return nil
}
