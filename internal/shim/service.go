//go:build linux

package shim

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskapi "github.com/containerd/containerd/api/runtime/task/v2"
	tasktypes "github.com/containerd/containerd/api/types/task"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keeplog"
)

// keepStartTimeout bounds a keep's start up to its evidence: generous, as
// a VM keep under TCG boots in tens of seconds.
const keepStartTimeout = 5 * time.Minute

// service is the task service of one shim: the containers of one pod (or
// one container started by ctr), each run in its own keep.
type service struct {
	ctx      context.Context
	f        *flags
	log      io.Writer
	shutdown func()
	events   *publisher

	mu    sync.Mutex
	tasks map[string]*task
}

var _ taskapi.TTRPCTaskService = (*service)(nil)

func newService(ctx context.Context, f *flags, logw io.Writer, shutdown func()) *service {
	return &service{ctx: ctx, f: f, log: logw, shutdown: shutdown, tasks: map[string]*task{},
		events: newPublisher(f.namespace, os.Getenv("TTRPC_ADDRESS"))}
}

func (s *service) logf(format string, a ...any) {
	fmt.Fprintf(s.log, "castellan shim: "+format+"\n", a...)
}

// close ends what is left when the shim stops.
func (s *service) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tasks {
		t.kill()
	}
	s.events.close()
}

// task is one container and its keep.
type task struct {
	id, bundle             string
	stdout, stderr         string
	sandbox                bool
	w                      *job
	launcher               keep.Launcher
	mounted                bool
	shimLog                func(string, ...any)
	publish                func(topic string, msg proto.Message)
	mu                     sync.Mutex
	st                     tasktypes.Status
	pid                    int
	exitStatus             uint32
	exitedAt               time.Time
	done                   chan struct{}
	inst                   keep.Instance
	kspec                  keep.Spec
	killed                 bool
	keepDir                string
	stdoutFile, stderrFile io.WriteCloser
}

func (s *service) get(id string) (*task, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tasks[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %s: not found", id)
	}
	return t, nil
}

// Create implements the task API: it mounts the rootfs, reads the OCI
// spec and finds the workload; the keep starts at Start.
func (s *service) Create(ctx context.Context, r *taskapi.CreateTaskRequest) (*taskapi.CreateTaskResponse, error) {
	if r.Terminal {
		return nil, status.Errorf(codes.InvalidArgument, "container %s: a keep has no terminal", r.ID)
	}
	s.mu.Lock()
	_, dup := s.tasks[r.ID]
	s.mu.Unlock()
	if dup {
		return nil, status.Errorf(codes.AlreadyExists, "container %s: already exists", r.ID)
	}
	spec, err := readSpec(r.Bundle)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "container %s: %v", r.ID, err)
	}
	t := &task{id: r.ID, bundle: r.Bundle, stdout: r.Stdout, stderr: r.Stderr, st: tasktypes.Status_CREATED,
		done: make(chan struct{}), shimLog: s.logf, publish: s.events.publish}
	if spec.Annotations[annotationContainerType] == "sandbox" {
		// A pod's sandbox holds no workload: it lives until killed.
		t.sandbox = true
	} else {
		opts, err := readOptions(r.Options)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "container %s: runtime options: %v", r.ID, err)
		}
		rootfs := filepath.Join(r.Bundle, "rootfs")
		if len(r.Rootfs) > 0 {
			if err := mountAll(r.Rootfs, rootfs); err != nil {
				return nil, status.Errorf(codes.Internal, "container %s: rootfs: %v", r.ID, err)
			}
			t.mounted = true
		}
		fail := func(c codes.Code, err error) (*taskapi.CreateTaskResponse, error) {
			if t.mounted {
				unmountAll(rootfs)
			}
			return nil, status.Errorf(c, "container %s: %v", r.ID, err)
		}
		src := &imageSource{containerd: s.f.address, namespace: s.f.namespace, id: r.ID}
		w, err := newJob(ctx, spec, rootfs, src, opts)
		if err != nil {
			return fail(codes.InvalidArgument, err)
		}
		if t.launcher, err = opts.launcher(); err != nil {
			return fail(codes.FailedPrecondition, err)
		}
		if err := t.launcher.Available(opts.Backend); err != nil {
			return fail(codes.FailedPrecondition, fmt.Errorf("backend %s: %w", opts.Backend, err))
		}
		t.w = w
		s.logf("container %s: package %s (%s), %s keep, backend %s", r.ID, w.art.Digest, w.source, opts.Keep, opts.Backend)
		for _, v := range w.volumes {
			s.logf("container %s: volume %s (%s, read-only %v)", r.ID, v.Guest, v.Host, v.ReadOnly)
		}
		for _, m := range w.skipped {
			s.logf("container %s: %s", r.ID, m)
		}
	}
	s.mu.Lock()
	s.tasks[r.ID] = t
	s.mu.Unlock()
	s.events.publish("/tasks/create", &eventstypes.TaskCreate{ContainerID: r.ID, Bundle: r.Bundle,
		IO: &eventstypes.TaskIO{Stdout: r.Stdout, Stderr: r.Stderr}, Pid: uint32(os.Getpid())})
	return &taskapi.CreateTaskResponse{Pid: uint32(os.Getpid())}, nil
}

// Start implements the task API: it starts the keep, checks its evidence
// and delivers the workload; it returns once the keep accepted it.
func (s *service) Start(ctx context.Context, r *taskapi.StartRequest) (*taskapi.StartResponse, error) {
	if r.ExecID != "" {
		return nil, status.Errorf(codes.Unimplemented, "exec: a keep runs one workload")
	}
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.st != tasktypes.Status_CREATED {
		t.mu.Unlock()
		return nil, status.Errorf(codes.FailedPrecondition, "container %s: already started", r.ID)
	}
	t.st = tasktypes.Status_RUNNING
	t.mu.Unlock()
	if t.sandbox {
		t.mu.Lock()
		t.pid = os.Getpid()
		t.mu.Unlock()
	} else if err := t.start(s.ctx); err != nil {
		// The container ends here: containerd deletes it next.
		t.exit(1)
		return nil, status.Errorf(codes.Unknown, "container %s: %v", r.ID, err)
	}
	s.events.publish("/tasks/start", &eventstypes.TaskStart{ContainerID: r.ID, Pid: uint32(t.pid)})
	return &taskapi.StartResponse{Pid: uint32(t.pid)}, nil
}

// start starts the keep and waits until it runs the workload or failed
// (then the failure is the task's exit, and on its stderr).
func (t *task) start(ctx context.Context) error {
	var err error
	if t.stdoutFile, err = openOutput(ctx, t.stdout); err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	if t.stderrFile, err = openOutput(ctx, t.stderr); err != nil {
		t.stdoutFile.Close()
		return fmt.Errorf("stderr: %w", err)
	}
	if t.keepDir, err = os.MkdirTemp("", "cstl-shim-"); err != nil {
		return err
	}
	fail := func(err error) error {
		t.stdoutFile.Close()
		t.stderrFile.Close()
		os.RemoveAll(t.keepDir)
		return err
	}
	sess, err := delivery.NewSession()
	if err != nil {
		return fail(err)
	}
	nonce, err := t.w.verifier.Nonce(ctx)
	if err != nil {
		return fail(fmt.Errorf("nonce from the attestation service: %w", err))
	}
	kid := make([]byte, 6)
	rand.Read(kid)
	t.kspec = keep.Spec{ID: fmt.Sprintf("shim-%x", kid), Dir: t.keepDir, Backend: t.w.opts.Backend, Nonce: nonce,
		Digest: t.w.art.Digest.String(), ClientKey: sess.KeyHash, AttachTimeout: time.Minute, Limits: t.w.limits,
		Volumes: t.w.volumes}
	if t.w.secrets {
		t.kspec.SecretServiceURL, t.kspec.SecretServiceCA = t.w.opts.Attest, t.w.opts.AttestCA
	}
	inst, err := t.launcher.Start(ctx, t.kspec)
	if err != nil {
		return fail(err)
	}
	t.mu.Lock()
	t.inst, t.pid = inst, inst.PID()
	t.mu.Unlock()
	writeKeepRecord(t.bundle, keepRecord{PID: inst.PID(), Ticks: inst.StartTicks(), ID: t.kspec.ID, Dir: t.keepDir})
	started := make(chan struct{})
	go t.run(ctx, sess, nonce, started)
	select {
	case <-started:
	case <-t.done:
	}
	return nil
}

// run is the keep's life: evidence, delivery, output, end.
func (t *task) run(ctx context.Context, sess *delivery.Session, nonce []byte, started chan struct{}) {
	logs := &lastLines{}
	ended := make(chan struct{})
	go func() {
		t.inst.Wait()
		close(ended)
	}()
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		stacks := false
		keeplog.Follow(ctx, keeplog.Path(t.keepDir), 0, keeplog.FollowOptions{Ended: ended}, func(b []byte, _ int64) error {
			line := string(b)
			// A crash's goroutine stacks go to neither log: they may
			// hold the workload's values.
			if stacks = stacks || strings.HasPrefix(line, "goroutine "); stacks || strings.HasPrefix(line, keep.StateLine) {
				return nil
			}
			t.shimLog("container %s: keep: %s", t.id, line)
			logs.add(line)
			return nil
		})
	}()
	code, failure, delivered := t.deliver(ctx, sess, nonce, started)
	if failure != "" {
		t.shimLog("container %s: %s", t.id, failure)
	}
	// The keep ends with its workload; a keep that hangs on is killed, and
	// one that never got its workload at once.
	wait := 30 * time.Second
	if !delivered {
		wait = 0
	}
	killedHere := false
	select {
	case <-ended:
	case <-time.After(wait):
		keep.KillGroup(t.inst.PID(), t.inst.StartTicks())
		killedHere = true
		<-ended
	}
	<-logDone
	t.mu.Lock()
	killed := t.killed
	t.mu.Unlock()
	if killed {
		code, failure = 128+int(syscall.SIGKILL), ""
	} else if failure != "" {
		if ps := t.inst.Wait(); ps != nil && !killedHere {
			if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
		}
		if rec := keep.ReadExitRecord(t.keepDir); rec != nil && rec.Reason != "" {
			failure += " (keep: " + rec.Reason + ")"
		} else if fatal := logs.fatal(); fatal != "" {
			var ok bool
			if failure, ok = keep.MemoryLimitReason(fatal, t.w.limits.MemoryBytes); !ok {
				failure = fmt.Sprintf("%s crashed: %s", t.inst.What(), fatal)
			}
		}
		fmt.Fprintf(t.stderrFile, "castellan: error: %s\n", failure)
		for _, l := range logs.get() {
			fmt.Fprintf(t.stderrFile, "castellan: keep: %s\n", l)
		}
	}
	t.launcher.Cleanup(t.kspec.ID, t.keepDir)
	os.RemoveAll(t.keepDir)
	os.Remove(filepath.Join(t.bundle, keepRecordFile))
	t.stdoutFile.Close()
	t.stderrFile.Close()
	t.exit(code)
}

// deliver verifies the keep and runs the workload in it; it returns the
// exit status, and a failure message when the keep did not run it to its
// end.
func (t *task) deliver(ctx context.Context, sess *delivery.Session, nonce []byte, started chan struct{}) (code int, failure string, delivered bool) {
	once := sync.OnceFunc(func() { close(started) })
	defer once()
	hctx, cancel := context.WithTimeout(ctx, keepStartTimeout)
	hello, err := t.inst.Hello(hctx)
	cancel()
	if err != nil {
		return 1, fmt.Sprintf("%s did not start: %v", t.inst.What(), err), false
	}
	h, _, err := delivery.ParseHello(hello)
	if err != nil {
		return 1, fmt.Sprintf("the keep's hello: %v", err), false
	}
	verified, err := t.w.verifier.Verify(ctx, h, nonce, t.w.art.Digest.String())
	if err != nil {
		return 1, err.Error(), false
	}
	conn, err := net.Dial("unix", filepath.Join(t.keepDir, keep.SocketFile))
	if err != nil {
		return 1, fmt.Sprintf("the keep's endpoint: %v", err), false
	}
	res, err := sess.Deliver(ctx, conn, verified, delivery.Delivery{Artifact: t.w.art, Name: t.w.name, Args: t.w.args,
		Stdout: t.stdoutFile, Stderr: t.stderrFile, OnStarted: once})
	if err != nil {
		return 1, err.Error(), true
	}
	if res.Reason != "" {
		return 1, res.Reason, true
	}
	return res.ExitCode, "", true
}

func (t *task) exit(code int) {
	t.mu.Lock()
	if t.st == tasktypes.Status_STOPPED {
		t.mu.Unlock()
		return
	}
	t.st = tasktypes.Status_STOPPED
	t.exitStatus = uint32(code)
	t.exitedAt = time.Now()
	pid := t.pid
	t.mu.Unlock()
	close(t.done)
	t.publish("/tasks/exit", &eventstypes.TaskExit{ContainerID: t.id, ID: t.id, Pid: uint32(pid),
		ExitStatus: uint32(code), ExitedAt: timestamppb.New(t.exitedAt)})
}

// kill ends the keep (a keep has no graceful stop: every signal kills).
func (t *task) kill() {
	t.mu.Lock()
	st, inst := t.st, t.inst
	if st == tasktypes.Status_RUNNING {
		t.killed = true
	}
	t.mu.Unlock()
	switch {
	case st != tasktypes.Status_RUNNING:
	case t.sandbox || inst == nil:
		t.exit(128 + int(syscall.SIGKILL))
	default:
		keep.KillGroup(inst.PID(), inst.StartTicks())
	}
}

// State implements the task API.
func (s *service) State(ctx context.Context, r *taskapi.StateRequest) (*taskapi.StateResponse, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	res := &taskapi.StateResponse{ID: t.id, Bundle: t.bundle, Pid: uint32(t.pid), Status: t.st,
		Stdout: t.stdout, Stderr: t.stderr, ExitStatus: t.exitStatus}
	if t.st == tasktypes.Status_STOPPED {
		res.ExitedAt = timestamppb.New(t.exitedAt)
	}
	return res, nil
}

// Kill implements the task API.
func (s *service) Kill(ctx context.Context, r *taskapi.KillRequest) (*emptypb.Empty, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		return nil, status.Errorf(codes.NotFound, "exec %s: not found", r.ExecID)
	}
	t.mu.Lock()
	created := t.st == tasktypes.Status_CREATED
	t.mu.Unlock()
	if created {
		t.exit(128 + int(r.Signal))
	}
	t.kill()
	return &emptypb.Empty{}, nil
}

// Wait implements the task API.
func (s *service) Wait(ctx context.Context, r *taskapi.WaitRequest) (*taskapi.WaitResponse, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	select {
	case <-t.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return &taskapi.WaitResponse{ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)}, nil
}

// Delete implements the task API: the keep must have ended; the rootfs is
// unmounted.
func (s *service) Delete(ctx context.Context, r *taskapi.DeleteRequest) (*taskapi.DeleteResponse, error) {
	if r.ExecID != "" {
		return nil, status.Errorf(codes.NotFound, "exec %s: not found", r.ExecID)
	}
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	st := t.st
	t.mu.Unlock()
	switch st {
	case tasktypes.Status_RUNNING:
		return nil, status.Errorf(codes.FailedPrecondition, "container %s: still running (kill it first)", r.ID)
	case tasktypes.Status_CREATED:
		t.exit(0)
	}
	if t.mounted {
		unmountAll(filepath.Join(t.bundle, "rootfs"))
	}
	s.mu.Lock()
	delete(s.tasks, r.ID)
	s.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	s.events.publish("/tasks/delete", &eventstypes.TaskDelete{ContainerID: t.id, ID: t.id, Pid: uint32(t.pid),
		ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)})
	return &taskapi.DeleteResponse{Pid: uint32(t.pid), ExitStatus: t.exitStatus, ExitedAt: timestamppb.New(t.exitedAt)}, nil
}

// Pids implements the task API: the keep's host process.
func (s *service) Pids(ctx context.Context, r *taskapi.PidsRequest) (*taskapi.PidsResponse, error) {
	t, err := s.get(r.ID)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pid == 0 {
		return &taskapi.PidsResponse{}, nil
	}
	return &taskapi.PidsResponse{Processes: []*tasktypes.ProcessInfo{{Pid: uint32(t.pid)}}}, nil
}

// Connect implements the task API.
func (s *service) Connect(ctx context.Context, r *taskapi.ConnectRequest) (*taskapi.ConnectResponse, error) {
	res := &taskapi.ConnectResponse{ShimPid: uint32(os.Getpid())}
	if t, err := s.get(r.ID); err == nil {
		t.mu.Lock()
		res.TaskPid = uint32(t.pid)
		t.mu.Unlock()
	}
	return res, nil
}

// Shutdown implements the task API: the shim ends once it serves no
// container.
func (s *service) Shutdown(ctx context.Context, r *taskapi.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	n := len(s.tasks)
	s.mu.Unlock()
	if n == 0 || r.Now {
		s.shutdown()
	}
	return &emptypb.Empty{}, nil
}

// Stats implements the task API (no metrics from keeps yet).
func (s *service) Stats(ctx context.Context, r *taskapi.StatsRequest) (*taskapi.StatsResponse, error) {
	return nil, status.Errorf(codes.Unimplemented, "stats: keeps report no metrics")
}

func (s *service) Pause(context.Context, *taskapi.PauseRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "pause: a keep cannot be paused")
}

func (s *service) Resume(context.Context, *taskapi.ResumeRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "resume: a keep cannot be paused")
}

func (s *service) Checkpoint(context.Context, *taskapi.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "checkpoint: a keep's memory stays in the keep")
}

func (s *service) Exec(context.Context, *taskapi.ExecProcessRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "exec: a keep runs one workload")
}

func (s *service) ResizePty(context.Context, *taskapi.ResizePtyRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "resize: a keep has no terminal")
}

func (s *service) CloseIO(context.Context, *taskapi.CloseIORequest) (*emptypb.Empty, error) {
	return &emptypb.Empty{}, nil
}

func (s *service) Update(context.Context, *taskapi.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, status.Errorf(codes.Unimplemented, "update: a keep's limits are set when it starts")
}

// lastLines keeps a keep's last log lines, shown when it fails, and its
// first "fatal error:" or "panic:" line apart: a Go runtime's crash prints
// more stack trace after that line than the last lines hold.
type lastLines struct {
	mu         sync.Mutex
	lines      []string
	firstFatal string
}

func (l *lastLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstFatal == "" && keep.IsCrashLine(s) {
		l.firstFatal = s
	}
	l.lines = append(l.lines, s)
	if len(l.lines) > 20 {
		l.lines = l.lines[1:]
	}
}

// fatal is the keep's first "fatal error:" or "panic:" line.
func (l *lastLines) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstFatal
}

func (l *lastLines) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// keepRecord is what the bundle says about its keep, for `delete` after
// the shim died.
type keepRecord struct {
	PID   int    `json:"pid"`
	Ticks uint64 `json:"ticks"`
	ID    string `json:"id"`
	Dir   string `json:"dir"`
}

const keepRecordFile = "castellan-keep.json"

func writeKeepRecord(bundle string, r keepRecord) {
	b, _ := json.Marshal(r)
	os.WriteFile(filepath.Join(bundle, keepRecordFile), b, 0o600)
}

// cleanupBundle kills the keep the bundle records and unmounts its rootfs.
func cleanupBundle(bundle string) {
	if b, err := os.ReadFile(filepath.Join(bundle, keepRecordFile)); err == nil {
		var r keepRecord
		if json.Unmarshal(b, &r) == nil && r.PID > 0 {
			keep.KillGroup(r.PID, r.Ticks)
			if strings.HasPrefix(filepath.Base(r.Dir), "cstl-shim-") {
				(&keep.Process{}).Cleanup(r.ID, r.Dir)
				os.RemoveAll(r.Dir)
			}
		}
		os.Remove(filepath.Join(bundle, keepRecordFile))
	}
	unmountAll(filepath.Join(bundle, "rootfs"))
}
