//go:build linux

package shim_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	leasesapi "github.com/containerd/containerd/api/services/leases/v1"
	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/ttrpc"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	digest "github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"

	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/shim"
)

// TestBenchShim measures, with the test's own containerd (so it runs only
// where TestContainerd does, and only when asked: CASTELLAN_BENCH_SHIM=N):
// `ctr run` through the shim to the first output line against `castellan
// run` of the same workload in the same run; then tasks per second for N
// short keeps created, started, awaited and deleted through containerd's
// task API (gRPC, as containerd's own client and runwasi's stress test
// drive it), CASTELLAN_BENCH_SHIM_CONCURRENCY at a time (16 unless set),
// in two interleaved modes: one shim a task (what `ctr run` makes) and
// one shim a pod (the tasks carry the CRI plugin's sandbox annotations,
// as the containers of a Kubernetes pod do). It reports figures and the
// median of each phase of a task as containerd's client sees it; it
// asserts only that every workload ran and printed its line
// (BENCHMARKS.md).
func TestBenchShim(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CASTELLAN_BENCH_SHIM"))
	if n <= 0 {
		t.Skip("set CASTELLAN_BENCH_SHIM=N (keeps for the tasks-per-second figure) to run the shim benchmark")
	}
	conc := 16
	if v, err := strconv.Atoi(os.Getenv("CASTELLAN_BENCH_SHIM_CONCURRENCY")); err == nil && v > 0 {
		conc = v
	}
	c := startContainerd(t)
	wasm := fixtures.C(t, "hello")
	img := rootfsImage(t, wasm, nil)
	c.importLayout(t, img, "example.com/bench:v1")
	want, err := exec.Command(c.exe, "run", "--no-cache", wasm).Output()
	if err != nil || len(want) == 0 {
		t.Fatalf("castellan run %s: %v", wasm, err)
	}

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

	load0 := loadAvg()
	d := newTaskDriver(t, c, img, "example.com/bench:v1")
	outDir := t.TempDir()
	cacheOpts := filepath.Join(t.TempDir(), "shim.toml")
	os.WriteFile(cacheOpts, []byte(fmt.Sprintf("keep_cache_dir = %q\n", filepath.Join(t.TempDir(), "cache"))), 0o644)
	modes := []*benchMode{
		{name: "one shim a task"},
		{name: "one shim a pod", pod: true},
		{name: "one shim a pod, compilation cache", pod: true, opts: cacheOpts},
	}
	// The modes alternate in slices of the N keeps, so that the machine's
	// load weighs on all alike.
	const slices = 4
	for s := 0; s < slices; s++ {
		for i, m := range modes {
			k := n / slices
			if s == slices-1 {
				k = n - k*(slices-1)
			}
			d.runMany(t, m, fmt.Sprintf("m%d-%d", i, s), k, conc, outDir)
		}
	}
	direct := benchDirect(t, c.exe, wasm, n, conc)
	all := append(append([]*benchMode(nil), modes...), direct)
	// VM keeps, when asked (CASTELLAN_BENCH_SHIM_VM=N): a few, as each
	// boots a VM (under TCG here, in seconds).
	var vm *benchMode
	if nvm, _ := strconv.Atoi(os.Getenv("CASTELLAN_BENCH_SHIM_VM")); nvm > 0 {
		vmOpts := filepath.Join(t.TempDir(), "vm.toml")
		os.WriteFile(vmOpts, []byte(fmt.Sprintf("keep = \"vm\"\nkeep_image = %q\n", vmKeepImage(t))), 0o644)
		vm = &benchMode{name: "VM keeps, one shim a pod", pod: true, opts: vmOpts, mem: 300 << 20}
		d.runMany(t, vm, "vm", nvm, vmConc, outDir)
		all = append(all, vm)
	}
	for _, m := range all {
		for _, f := range m.outputs {
			b, err := os.ReadFile(f)
			if err != nil || string(b) != string(want) {
				t.Fatalf("%s: output %q (%v), want %q", f, b, err, want)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\n| measure | figure |\n| --- | --- |\n")
	fmt.Fprintf(&b, "| `ctr run` through the shim, start to first output (median of %d) | %v |\n", rounds, median(ctrD))
	fmt.Fprintf(&b, "| `castellan run --no-cache`, start to first output (median of %d) | %v |\n", rounds, median(runD))
	fmt.Fprintf(&b, "\n| %d keeps through containerd's task API, %d at a time | tasks/s | time | machine CPU a task |\n| --- | --- | --- | --- |\n", n, conc)
	for _, m := range modes {
		k := float64(len(m.outputs))
		fmt.Fprintf(&b, "| %s | %.1f | %v | %.0f ms |\n", m.name, k/m.elapsed.Seconds(), m.elapsed.Round(time.Millisecond), m.cpu.Seconds()*1000/k)
	}
	fmt.Fprintf(&b, "| the shim's task API alone (no containerd), one shim, compilation cache | %.1f | %v | %.0f ms |\n",
		float64(n)/direct.elapsed.Seconds(), direct.elapsed.Round(time.Millisecond), direct.cpu.Seconds()*1000/float64(n))
	if vm != nil {
		k := float64(len(vm.outputs))
		fmt.Fprintf(&b, "| %d VM keeps (TCG), one shim a pod, %d at a time | %.2f | %v | %.0f ms |\n",
			len(vm.outputs), vmConc, k/vm.elapsed.Seconds(), vm.elapsed.Round(time.Millisecond), vm.cpu.Seconds()*1000/k)
	}
	fmt.Fprintf(&b, "\nThe shim daemon's exit after Shutdown (no containerd): %v\n", direct.shutdown.Round(100*time.Microsecond))
	phased := append([]*benchMode(nil), modes...)
	if vm != nil {
		phased = append(phased, vm)
	}
	fmt.Fprintf(&b, "\n| phase (median, ms) |")
	for _, m := range phased {
		fmt.Fprintf(&b, " %s |", m.name)
	}
	fmt.Fprintf(&b, "\n| --- |%s\n", strings.Repeat(" --- |", len(phased)))
	for i, p := range phaseNames {
		fmt.Fprintf(&b, "| %s |", p)
		for _, m := range phased {
			fmt.Fprintf(&b, " %.1f |", float64(median(m.phases[i]).Microseconds())/1000)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "\n(load average before: %s, after: %s)\n", load0, loadAvg())
	t.Log(b.String())
}

// vmConc is how many VM keeps the benchmark runs at a time.
const vmConc = 2

// phaseNames are the steps of one task as containerd's client makes them.
var phaseNames = []string{
	"snapshot + container",
	"task create (shim start, rootfs, workload)",
	"task start (keep, evidence, delivery)",
	"wait (workload runs, keep ends)",
	"task delete + container + snapshot",
}

// benchMode is one way of running the benchmark's tasks, and its figures.
type benchMode struct {
	name string
	pod  bool   // the tasks are the containers of one pod (one shim)
	opts string // the runtime options file, if any
	mem  int64  // the containers' memory limit, if any

	shutdown time.Duration // the shim's exit after Shutdown (direct mode)

	mu      sync.Mutex
	elapsed time.Duration
	cpu     time.Duration // the whole machine's CPU time (all processes)
	phases  [5][]time.Duration
	outputs []string
}

// machineCPU is the CPU time all processes used so far (/proc/stat): the
// shim's cost is spread over containerd, shim daemons, `start` commands
// and keeps, so the benchmark counts the machine's.
func machineCPU(t *testing.T) time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	var ticks int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// taskDriver drives containerd's gRPC API the way its Go client does for
// `ctr run`: a snapshot of the image, a container, its task.
type taskDriver struct {
	c          *containerd
	ctx        context.Context
	image      string
	chainID    string
	containers containersapi.ContainersClient
	snapshots  snapshotsapi.SnapshotsClient
	tasks      tasksapi.TasksClient
}

const benchSnapshotter = "overlayfs"

func newTaskDriver(t *testing.T, c *containerd, img v1.Image, ref string) *taskDriver {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "containerd-namespace", c.ns)
	// One lease keeps the benchmark's snapshots from containerd's garbage
	// collector between their creation and their container's.
	leases := leasesapi.NewLeasesClient(conn)
	l, err := leases.Create(ctx, &leasesapi.CreateRequest{ID: "castellan-bench"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leases.Delete(ctx, &leasesapi.DeleteRequest{ID: l.Lease.ID, Sync: true}) })
	ctx = metadata.AppendToOutgoingContext(ctx, "containerd-lease", l.Lease.ID)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	// The image's unpacked snapshot is named by its layers' chain ID.
	var chain digest.Digest
	for _, d := range cf.RootFS.DiffIDs {
		if chain == "" {
			chain = digest.Digest(d.String())
		} else {
			chain = digest.FromString(chain.String() + " " + d.String())
		}
	}
	return &taskDriver{c: c, ctx: ctx, image: ref, chainID: chain.String(),
		containers: containersapi.NewContainersClient(conn), snapshots: snapshotsapi.NewSnapshotsClient(conn),
		tasks: tasksapi.NewTasksClient(conn)}
}

// spec is the OCI runtime spec of a container running the image's
// entrypoint; annotations make it a pod's.
func (d *taskDriver) spec(t *testing.T, annotations map[string]string, mem int64) *anypb.Any {
	t.Helper()
	s := specs.Spec{Version: specs.Version, Root: &specs.Root{Path: "rootfs"}, Annotations: annotations,
		Process: &specs.Process{Args: []string{"/app/main.wasm"}, Cwd: "/", Env: []string{"PATH=/"}}}
	if mem > 0 {
		s.Linux = &specs.Linux{Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &mem}}}
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec", Value: b}
}

// runMany runs k tasks, conc at a time; mode "pod" puts them in one pod
// (a sandbox task holds its shim for the pod's life, as the CRI plugin's
// does).
func (d *taskDriver) runMany(t *testing.T, m *benchMode, prefix string, k, conc int, outDir string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(d.ctx, 10*time.Minute)
	defer cancel()
	rt := &containersapi.Container_Runtime{Name: shim.RuntimeType}
	if m.opts != "" {
		// As `ctr run --runtime-config-path`.
		b, err := proto.Marshal(&runtimeoptions.Options{ConfigPath: m.opts})
		if err != nil {
			t.Fatal(err)
		}
		rt.Options = &anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: b}
	}
	var sandbox string
	if m.pod {
		sandbox = prefix + "-sandbox"
		if _, err := d.containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
			ID: sandbox, Runtime: rt,
			Spec: d.spec(t, map[string]string{"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": sandbox}, 0),
		}}); err != nil {
			t.Fatalf("sandbox container: %v", err)
		}
		if _, err := d.tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: sandbox}); err != nil {
			t.Fatalf("sandbox task: %v", err)
		}
		if _, err := d.tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: sandbox}); err != nil {
			t.Fatalf("sandbox start: %v", err)
		}
	}
	start, cpu0 := time.Now(), machineCPU(t)
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	errs := make(chan error, k)
	for i := 0; i < k; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(id string) {
			defer wg.Done()
			defer func() { <-sem }()
			var ann map[string]string
			if sandbox != "" {
				ann = map[string]string{"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox}
			}
			out := filepath.Join(outDir, id+".out")
			ph, err := d.runOne(ctx, t, id, rt, ann, m.mem, out)
			if err != nil {
				errs <- fmt.Errorf("task %s: %w", id, err)
				return
			}
			m.mu.Lock()
			for j, p := range ph {
				m.phases[j] = append(m.phases[j], p)
			}
			m.outputs = append(m.outputs, out)
			m.mu.Unlock()
		}(fmt.Sprintf("%s-%d", prefix, i))
	}
	wg.Wait()
	m.elapsed += time.Since(start)
	m.cpu += machineCPU(t) - cpu0
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if sandbox != "" {
		d.tasks.Kill(ctx, &tasksapi.KillRequest{ContainerID: sandbox, Signal: 9})
		if _, err := d.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: sandbox}); err != nil {
			t.Fatalf("sandbox wait: %v", err)
		}
		if _, err := d.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: sandbox}); err != nil {
			t.Fatalf("sandbox delete: %v", err)
		}
		d.containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: sandbox})
	}
}

// runOne creates, starts, awaits and deletes one task whose stdout goes
// to out; it returns the time of each phase.
func (d *taskDriver) runOne(ctx context.Context, t *testing.T, id string, rt *containersapi.Container_Runtime, ann map[string]string, mem int64, out string) ([5]time.Duration, error) {
	var ph [5]time.Duration
	mark := time.Now()
	lap := func(i int) {
		now := time.Now()
		ph[i] = now.Sub(mark)
		mark = now
	}
	snap, err := d.snapshots.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Snapshotter: benchSnapshotter, Key: id, Parent: d.chainID})
	if err != nil {
		return ph, fmt.Errorf("snapshot: %w", err)
	}
	defer d.snapshots.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: benchSnapshotter, Key: id})
	if _, err := d.containers.Create(ctx, &containersapi.CreateContainerRequest{Container: &containersapi.Container{
		ID: id, Image: d.image, Runtime: rt, Spec: d.spec(t, ann, mem),
		Snapshotter: benchSnapshotter, SnapshotKey: id,
	}}); err != nil {
		return ph, fmt.Errorf("container: %w", err)
	}
	defer d.containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id})
	lap(0)
	if _, err := d.tasks.Create(ctx, &tasksapi.CreateTaskRequest{ContainerID: id, Rootfs: snap.Mounts, Stdout: "file://" + out}); err != nil {
		return ph, fmt.Errorf("create: %w", err)
	}
	lap(1)
	if _, err := d.tasks.Start(ctx, &tasksapi.StartRequest{ContainerID: id}); err != nil {
		d.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id})
		return ph, fmt.Errorf("start: %w", err)
	}
	lap(2)
	w, err := d.tasks.Wait(ctx, &tasksapi.WaitRequest{ContainerID: id})
	if err != nil {
		return ph, fmt.Errorf("wait: %w", err)
	}
	lap(3)
	if _, err := d.tasks.Delete(ctx, &tasksapi.DeleteTaskRequest{ContainerID: id}); err != nil {
		return ph, fmt.Errorf("delete: %w", err)
	}
	if w.ExitStatus != 0 {
		return ph, fmt.Errorf("exit status %d", w.ExitStatus)
	}
	// The deferred removals are the last phase: time them here.
	d.containers.Delete(ctx, &containersapi.DeleteContainerRequest{ID: id})
	d.snapshots.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Snapshotter: benchSnapshotter, Key: id})
	lap(4)
	return ph, nil
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2].Round(10 * time.Microsecond)
}

// benchDirect runs n keeps through one shim's own task API, conc at a
// time, with no containerd: what runwasi's stress test measures of its
// shims. The shim is started as containerd starts it (`start`, which
// prints the daemon's address) and shut down at the end; each task's
// bundle holds the spec and the rootfs with the module.
func benchDirect(t *testing.T, exe, wasm string, n, conc int) *benchMode {
	t.Helper()
	dir := t.TempDir()
	mod, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	opts := filepath.Join(dir, "shim.toml")
	os.WriteFile(opts, []byte(fmt.Sprintf("keep_cache_dir = %q\n", filepath.Join(dir, "cache"))), 0o644)
	ob, err := proto.Marshal(&runtimeoptions.Options{ConfigPath: opts})
	if err != nil {
		t.Fatal(err)
	}
	optsAny := &anypb.Any{TypeUrl: "runtimeoptions.v1.Options", Value: ob}
	mkBundle := func(id string) string {
		b := filepath.Join(dir, id)
		if err := os.MkdirAll(filepath.Join(b, "rootfs", "app"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(b, "rootfs", "app", "main.wasm"), mod, 0o644)
		spec, _ := json.Marshal(specs.Spec{Version: specs.Version, Root: &specs.Root{Path: "rootfs"},
			Process: &specs.Process{Args: []string{"/app/main.wasm"}, Cwd: "/"}})
		os.WriteFile(filepath.Join(b, "config.json"), spec, 0o644)
		return b
	}
	first := mkBundle("direct-shim")
	start := exec.Command(filepath.Join(filepath.Dir(exe), shim.BinaryName), "-namespace", "castellan-bench", "-id", "direct-shim",
		"-bundle", first, "start")
	start.Dir = first
	addr, err := start.Output()
	if err != nil {
		t.Fatalf("shim start: %v", err)
	}
	conn, err := net.Dial("unix", strings.TrimPrefix(string(addr), "unix://"))
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	tasks := taskapi.NewTTRPCTaskClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cn, err := tasks.Connect(ctx, &taskapi.ConnectRequest{ID: "direct-shim"})
	if err != nil {
		t.Fatal(err)
	}
	// shutdown ends the daemon as containerd does (Shutdown, then it
	// hangs up) and returns how long the daemon took to exit.
	var once sync.Once
	var exitTime time.Duration
	shutdown := func() time.Duration {
		once.Do(func() {
			t0 := time.Now()
			tasks.Shutdown(context.Background(), &taskapi.ShutdownRequest{Now: true})
			client.Close()
			// The daemon is no child of ours: wait until it is gone (or a
			// zombie its reaper has yet to collect).
			for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cn.ShimPid))
				if i := bytes.LastIndexByte(stat, ')'); err != nil || i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
					exitTime = time.Since(t0)
					return
				}
			}
			t.Errorf("the shim daemon %d did not end", cn.ShimPid)
		})
		return exitTime
	}
	t.Cleanup(func() { shutdown() })
	bundles := make([]string, n)
	for i := range bundles {
		bundles[i] = mkBundle(fmt.Sprintf("direct-%d", i))
	}
	m := &benchMode{}
	t0, cpu0 := time.Now(), machineCPU(t)
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	errs := make(chan error, n)
	for i, b := range bundles {
		wg.Add(1)
		sem <- struct{}{}
		go func(id, b string) {
			defer wg.Done()
			defer func() { <-sem }()
			out := filepath.Join(b, "out")
			if _, err := tasks.Create(ctx, &taskapi.CreateTaskRequest{ID: id, Bundle: b, Stdout: "file://" + out, Options: optsAny}); err != nil {
				errs <- fmt.Errorf("%s: create: %w", id, err)
				return
			}
			if _, err := tasks.Start(ctx, &taskapi.StartRequest{ID: id}); err != nil {
				errs <- fmt.Errorf("%s: start: %w", id, err)
			} else if w, err := tasks.Wait(ctx, &taskapi.WaitRequest{ID: id}); err != nil || w.ExitStatus != 0 {
				errs <- fmt.Errorf("%s: wait: %v, %v", id, w, err)
			}
			tasks.Delete(ctx, &taskapi.DeleteRequest{ID: id})
			m.mu.Lock()
			m.outputs = append(m.outputs, out)
			m.mu.Unlock()
		}(fmt.Sprintf("direct-%d", i), b)
	}
	wg.Wait()
	m.elapsed, m.cpu = time.Since(t0), machineCPU(t)-cpu0
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	m.shutdown = shutdown()
	return m
}
