//go:build linux

package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/host"
	"github.com/castellan-dev/castellan/internal/keep"
)

// The test binary is also the keep process of the service tests.
func TestMain(m *testing.M) {
	if os.Getenv("CASTELLAN_SHIM_TEST_KEEP") == "1" {
		os.Exit(host.KeepMain(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// newTestService is the task service with keeps started from the test
// binary, and no containerd (rootfs images only, no events).
func newTestService(t *testing.T) *service {
	t.Helper()
	t.Setenv("CASTELLAN_SHIM_TEST_KEEP", "1")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	old := newLauncher
	newLauncher = func(o *Options) (keep.Launcher, error) { return &keep.Process{Command: []string{exe}}, nil }
	t.Cleanup(func() { newLauncher = old })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return newService(ctx, &flags{namespace: "test"}, os.Stderr, cancel)
}

// bundle makes a bundle whose rootfs holds wasm as /app/main.wasm.
func bundle(t *testing.T, wasm string, spec *specs.Spec) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "rootfs", "app"), 0o755)
	b, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "rootfs", "app", "main.wasm"), b, 0o644)
	sb, _ := json.Marshal(spec)
	os.WriteFile(filepath.Join(dir, "config.json"), sb, 0o644)
	return dir
}

func TestServiceLifecycle(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"/app/main.wasm", "one"}, Env: []string{"EXIT_CODE=7", "GREETING=hi"}}}
	b := bundle(t, fixtures.Go(t, "hello"), spec)
	out := filepath.Join(t.TempDir(), "out.log")
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: b, Stdout: "file://" + out, Stderr: "file://" + out}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "c1", Bundle: b}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("second create: %v, want AlreadyExists", err)
	}
	st, _ := s.State(ctx, &taskapi.StateRequest{ID: "c1"})
	if st.Status != tasktypes.Status_CREATED {
		t.Errorf("state %v, want created", st.Status)
	}
	started, err := s.Start(ctx, &taskapi.StartRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if started.Pid == 0 || int(started.Pid) == os.Getpid() {
		t.Errorf("pid %d: want the keep's", started.Pid)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w, err := s.Wait(wctx, &taskapi.WaitRequest{ID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if w.ExitStatus != 7 {
		t.Errorf("exit status %d, want 7", w.ExitStatus)
	}
	log, _ := os.ReadFile(out)
	for _, want := range []string{"hello from a keep", "arg[1]=one", "env GREETING=hi"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("output lacks %q:\n%s", want, log)
		}
	}
	if _, err := s.Start(ctx, &taskapi.StartRequest{ID: "c1"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("start after the end: %v, want FailedPrecondition", err)
	}
	d, err := s.Delete(ctx, &taskapi.DeleteRequest{ID: "c1"})
	if err != nil || d.ExitStatus != 7 {
		t.Errorf("delete: %v, %v", d, err)
	}
	if _, err := s.State(ctx, &taskapi.StateRequest{ID: "c1"}); status.Code(err) != codes.NotFound {
		t.Errorf("state after delete: %v, want NotFound", err)
	}
}

func TestServiceKill(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	b := bundle(t, fixtures.C(t, "spin"), &specs.Spec{Process: &specs.Process{Args: []string{"/app/main.wasm"}}})
	out := filepath.Join(t.TempDir(), "out.log")
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "spin", Bundle: b, Stdout: "file://" + out}); err != nil {
		t.Fatal(err)
	}
	started, err := s.Start(ctx, &taskapi.StartRequest{ID: "spin"})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(out); strings.Contains(string(b), "spinning") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the spinning workload printed nothing in 2 minutes")
		}
	}
	if _, err := s.Delete(ctx, &taskapi.DeleteRequest{ID: "spin"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete while running: %v, want FailedPrecondition", err)
	}
	if _, err := s.Kill(ctx, &taskapi.KillRequest{ID: "spin", Signal: 15}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w, err := s.Wait(wctx, &taskapi.WaitRequest{ID: "spin"})
	if err != nil || w.ExitStatus != 137 {
		t.Fatalf("wait: %v, %v; want status 137", w, err)
	}
	if keep.Alive(int(started.Pid), 0) {
		t.Errorf("the keep %d still runs", started.Pid)
	}
	if _, err := s.Delete(ctx, &taskapi.DeleteRequest{ID: "spin"}); err != nil {
		t.Errorf("delete: %v", err)
	}
}

func TestServiceSandbox(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"/pause"}},
		Annotations: map[string]string{annotationContainerType: "sandbox"}}
	b := t.TempDir()
	sb, _ := json.Marshal(spec)
	os.WriteFile(filepath.Join(b, "config.json"), sb, 0o644)
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "pod", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskapi.StartRequest{ID: "pod"}); err != nil {
		t.Fatal(err)
	}
	st, _ := s.State(ctx, &taskapi.StateRequest{ID: "pod"})
	if st.Status != tasktypes.Status_RUNNING {
		t.Errorf("sandbox state %v, want running", st.Status)
	}
	s.Kill(ctx, &taskapi.KillRequest{ID: "pod", Signal: 9})
	w, err := s.Wait(ctx, &taskapi.WaitRequest{ID: "pod"})
	if err != nil || w.ExitStatus != 137 {
		t.Errorf("wait: %v, %v", w, err)
	}
	if _, err := s.Delete(ctx, &taskapi.DeleteRequest{ID: "pod"}); err != nil {
		t.Errorf("delete: %v", err)
	}
}

func TestServiceRefusals(t *testing.T) {
	s := newTestService(t)
	ctx := context.Background()
	b := bundle(t, fixtures.C(t, "hello"), &specs.Spec{Process: &specs.Process{Args: []string{"/app/main.wasm"}}})
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "tty", Bundle: b, Terminal: true}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "a keep has no terminal") {
		t.Errorf("terminal: %v", err)
	}
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: "nobundle", Bundle: filepath.Join(t.TempDir(), "missing")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("missing bundle: %v", err)
	}
	for _, call := range []func() error{
		func() error { _, err := s.Exec(ctx, &taskapi.ExecProcessRequest{ID: "x"}); return err },
		func() error { _, err := s.Pause(ctx, &taskapi.PauseRequest{ID: "x"}); return err },
		func() error { _, err := s.Checkpoint(ctx, &taskapi.CheckpointTaskRequest{ID: "x"}); return err },
		func() error { _, err := s.Update(ctx, &taskapi.UpdateTaskRequest{ID: "x"}); return err },
	} {
		if err := call(); status.Code(err) != codes.Unimplemented {
			t.Errorf("%v, want Unimplemented", err)
		}
	}
	if _, err := s.Kill(ctx, &taskapi.KillRequest{ID: "none"}); status.Code(err) != codes.NotFound {
		t.Errorf("kill of an unknown container: %v", err)
	}
}

// TestDeleteAction: `delete` after a shim died kills the keep its bundle
// records (checked against the process's start time) and answers
// containerd with the container's end.
func TestDeleteAction(t *testing.T) {
	bundle := t.TempDir()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ticks, err := keep.StartTicks(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	// A record whose start time does not match kills nothing.
	writeKeepRecord(bundle, keepRecord{PID: cmd.Process.Pid, Ticks: ticks + 1, ID: "k", Dir: filepath.Join(t.TempDir(), "cstl-shim-x")})
	var out bytes.Buffer
	if code := Main([]string{"-namespace", "n", "-id", "c", "-bundle", bundle, "delete"}, nil, &out, os.Stderr); code != 0 {
		t.Fatalf("delete: status %d", code)
	}
	if !keep.Alive(cmd.Process.Pid, ticks) {
		t.Fatal("a record with another start time killed the process")
	}
	writeKeepRecord(bundle, keepRecord{PID: cmd.Process.Pid, Ticks: ticks, ID: "k", Dir: filepath.Join(t.TempDir(), "cstl-shim-x")})
	out.Reset()
	if code := Main([]string{"-namespace", "n", "-id", "c", "-bundle", bundle, "delete"}, nil, &out, os.Stderr); code != 0 {
		t.Fatalf("delete: status %d", code)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the recorded keep was not killed")
	}
	var res taskapi.DeleteResponse
	if err := proto.Unmarshal(out.Bytes(), &res); err != nil || res.ExitStatus != 137 {
		t.Errorf("response %v (%v), want exit status 137", &res, err)
	}
	if _, err := os.Stat(filepath.Join(bundle, keepRecordFile)); !os.IsNotExist(err) {
		t.Errorf("the keep record is still there: %v", err)
	}
}

// runTask creates, starts and awaits container id and returns its exit
// status and output.
func runTask(t *testing.T, s *service, id, b string) (uint32, string) {
	t.Helper()
	ctx := context.Background()
	out := filepath.Join(t.TempDir(), "out.log")
	if _, err := s.Create(ctx, &taskapi.CreateTaskRequest{ID: id, Bundle: b, Stdout: "file://" + out, Stderr: "file://" + out}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskapi.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	w, err := s.Wait(wctx, &taskapi.WaitRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	s.Delete(ctx, &taskapi.DeleteRequest{ID: id})
	log, _ := os.ReadFile(out)
	return w.ExitStatus, string(log)
}

// TestServiceVolumes: the container's bind mounts of folders are the
// workload's preopens at the same paths. The workload (fileio) writes,
// renames and links in a read-write volume, and its escapes (a relative
// link out of the volume to a file that exists beside it, a link the host
// left to an absolute path) are refused; a read-only volume is read and
// every write to it refused.
func TestServiceVolumes(t *testing.T) {
	s := newTestService(t)
	fileio := fixtures.Go(t, "fileio")
	base := t.TempDir()
	rw, ro := filepath.Join(base, "rw"), filepath.Join(base, "ro")
	os.Mkdir(rw, 0o755)
	os.Mkdir(ro, 0o755)
	const outside = "outside the volume\n"
	os.WriteFile(filepath.Join(base, "outside.txt"), []byte(outside), 0o644)
	os.Symlink(filepath.Join(base, "outside.txt"), filepath.Join(rw, "hostabs"))
	os.WriteFile(filepath.Join(ro, "ro.txt"), []byte("read only\n"), 0o644)

	spec := &specs.Spec{Process: &specs.Process{Args: []string{"/app/main.wasm"}, Env: []string{"DIR=/data"}},
		Mounts: []specs.Mount{{Destination: "/data", Type: "bind", Source: rw, Options: []string{"rbind", "rw"}}}}
	code, out := runTask(t, s, "vol-rw", bundle(t, fileio, spec))
	for _, want := range []string{"ok write\n", "ok read via symlink out refused", "ok read via absolute symlink refused", "ok write via symlink out refused", "done\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("read-write volume: output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("read-write volume: exit status %d:\n%s", code, out)
	}
	// The workload's links are in the host folder; the file beside it is
	// as it was.
	if target, err := os.Readlink(filepath.Join(rw, "link")); err != nil || target != "sub/b.txt" {
		t.Errorf("the workload's link in the host folder: %q %v", target, err)
	}
	if b, _ := os.ReadFile(filepath.Join(base, "outside.txt")); string(b) != outside {
		t.Errorf("the file outside the volume became %q", b)
	}

	spec = &specs.Spec{Process: &specs.Process{Args: []string{"/app/main.wasm"}, Env: []string{"DIR=/config", "RO=1"}},
		Mounts: []specs.Mount{{Destination: "/config", Type: "bind", Source: ro, Options: []string{"rbind", "ro"}}}}
	code, out = runTask(t, s, "vol-ro", bundle(t, fileio, spec))
	for _, want := range []string{"ok read\n", "ok create refused", "ok open for writing refused", "ok remove refused", "done\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("read-only volume: output lacks %q:\n%s", want, out)
		}
	}
	if code != 0 {
		t.Errorf("read-only volume: exit status %d:\n%s", code, out)
	}
	if ents, _ := os.ReadDir(ro); len(ents) != 1 {
		t.Errorf("the read-only volume changed: %v", ents)
	}
}

// TestLastLinesFatal: the crash line of a keep whose Go runtime printed a
// long stack trace after it is still found.
func TestLastLinesFatal(t *testing.T) {
	var l lastLines
	l.add("keep: running")
	l.add("fatal error: out of memory")
	for i := 0; i < 200; i++ {
		l.add(fmt.Sprintf("goroutine %d [running]:", i))
	}
	l.add("panic: a later one")
	if got := l.fatal(); got != "fatal error: out of memory" {
		t.Errorf("fatal() = %q", got)
	}
	if n := len(l.get()); n != 20 {
		t.Errorf("%d last lines kept, want 20", n)
	}
}
