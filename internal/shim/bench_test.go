//go:build linux

package shim_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/shim"
)

// TestBenchShim measures, with the test's own containerd (so it runs only
// where TestContainerd does, and only when asked: CASTELLAN_BENCH_SHIM=N):
// `ctr run` through the shim to the first output line against `castellan
// run` of the same workload in the same run, and tasks per second for N
// short keeps started and awaited through the shim, 4 at a time. It reports
// figures; it asserts only that the workloads ran (BENCHMARKS.md).
func TestBenchShim(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CASTELLAN_BENCH_SHIM"))
	if n <= 0 {
		t.Skip("set CASTELLAN_BENCH_SHIM=N (keeps for the tasks-per-second figure) to run the shim benchmark")
	}
	c := startContainerd(t)
	wasm := fixtures.C(t, "hello")
	c.importLayout(t, rootfsImage(t, wasm, nil), "example.com/bench:v1")

	firstLine := func(name string, args ...string) time.Duration {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		out, _ := cmd.StdoutPipe()
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		if !sc.Scan() {
			t.Fatalf("%s: no output", name)
		}
		d := time.Since(start)
		for sc.Scan() {
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return d
	}
	const rounds = 5
	var ctrD, runD []time.Duration
	for i := 0; i < rounds; i++ {
		ctrD = append(ctrD, firstLine("ctr", "-a", c.sock, "-n", "castellan", "run", "--rm", "--runtime", shim.RuntimeType,
			"example.com/bench:v1", fmt.Sprintf("first%d", i)))
		runD = append(runD, firstLine(c.exe, "run", "--no-cache", wasm))
	}
	t.Logf("first output, median of %d: ctr run through the shim %v, castellan run %v", rounds, median(ctrD), median(runD))

	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			if out, err := c.ctr("run", "--rm", "--runtime", shim.RuntimeType, "example.com/bench:v1", fmt.Sprintf("task%d", i)); err != nil {
				errs <- fmt.Errorf("task %d: %v: %s", i, err, out)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("%d keeps started and awaited through the shim (ctr run --rm, 4 at a time): %v, %.1f tasks/s", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2].Round(time.Millisecond)
}
