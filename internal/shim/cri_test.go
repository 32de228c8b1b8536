//go:build linux

package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/shim"
)

// criConfig enables containerd's CRI plugin with the castellan runtime
// handler as a node gets it from 'castellan shim install', a local sandbox
// image and no CNI (the test's pods use the node's network).
const criConfig = `
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "example.com/sandbox:v1"
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "%[1]s/cni/bin"
    conf_dir = "%[1]s/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.castellan]
    runtime_type = "` + shim.RuntimeType + `"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.castellan.options]
    ConfigPath = "%[1]s/shim.toml"
`

// TestCRI runs a pod with the castellan runtime handler through
// containerd's CRI plugin, as the kubelet does: the pod's sandbox, a
// container whose output becomes its CRI log file, its exit status (which
// CRI learns from the shim's exit event), and the pod's removal.
func TestCRI(t *testing.T) {
	c := startContainerdWith(t, criConfig)
	os.WriteFile(filepath.Join(c.dir, "shim.toml"), []byte("keep = \"process\"\nbackend = \"nil\"\n"), 0o644)
	c.ns = "k8s.io"
	helloImg := rootfsImage(t, fixtures.Go(t, "hello"), nil)
	c.importLayout(t, helloImg, "example.com/sandbox:v1")
	c.importLayout(t, helloImg, "example.com/hello:v1")
	c.importLayout(t, rootfsImage(t, fixtures.Go(t, "fileio"), nil), "example.com/fileio:v1")

	conn, err := grpc.NewClient("unix://"+c.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatalf("CRI: %v", err)
	}
	logDir := t.TempDir()
	pod := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "hello", Namespace: "default", Uid: "4b9d0e5c-1"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
	}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "castellan"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	defer func() {
		rt.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		if _, err := rt.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
	}()
	st, log := runPodContainer(ctx, t, rt, sb.PodSandboxId, pod, logDir, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
		Image:    &runtimeapi.ImageSpec{Image: "example.com/hello:v1"},
		Args:     []string{"from-the-pod"},
		Envs:     []*runtimeapi.KeyValue{{Key: "EXIT_CODE", Value: []byte("4")}},
		LogPath:  "hello.log",
		Linux:    &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{MemoryLimitInBytes: 512 << 20}},
	})
	if st.ExitCode != 4 {
		t.Errorf("exit code %d, want 4 (%s)", st.ExitCode, st.Message)
	}
	for _, want := range []string{" stdout F hello from a keep", "arg[1]=from-the-pod", "env EXIT_CODE=4"} {
		if !strings.Contains(log, want) {
			t.Errorf("the CRI log lacks %q:\n%s", want, log)
		}
	}

	// A volume, as the kubelet gives an emptyDir: the workload writes in it
	// and its escapes are refused; the kubelet's file mounts (here
	// /etc/hosts) are not given.
	vol := t.TempDir()
	os.WriteFile(filepath.Join(filepath.Dir(vol), "outside.txt"), []byte("outside\n"), 0o644)
	hosts := filepath.Join(t.TempDir(), "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	st, log = runPodContainer(ctx, t, rt, sb.PodSandboxId, pod, logDir, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "vol"},
		Image:    &runtimeapi.ImageSpec{Image: "example.com/fileio:v1"},
		Envs:     []*runtimeapi.KeyValue{{Key: "DIR", Value: []byte("/data")}},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: vol}, {ContainerPath: "/etc/hosts", HostPath: hosts, Readonly: true}},
		LogPath:  "vol.log",
	})
	if st.ExitCode != 0 || !strings.Contains(log, "ok read via symlink out refused") || !strings.Contains(log, " stdout F done") {
		t.Errorf("volume: exit code %d (%s):\n%s", st.ExitCode, st.Message, log)
	}
	if target, err := os.Readlink(filepath.Join(vol, "link")); err != nil || target != "sub/b.txt" {
		t.Errorf("the workload's link in the volume: %q %v", target, err)
	}

	// The handler's options (the file containerd's config names) send
	// keeps to an attestation service that releases a secret to workload
	// A's digest: A gets it, B (another digest) is refused it.
	k := newKBSFixture(t, c, fixtures.Go(t, "hello"))
	os.WriteFile(filepath.Join(c.dir, "shim.toml"), []byte(k.options), 0o644)
	st, log = runPodContainer(ctx, t, rt, sb.PodSandboxId, pod, logDir, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "kbs-a"},
		Image:    &runtimeapi.ImageSpec{Image: "example.com/kbs-a:v1"},
		LogPath:  "kbs-a.log",
	})
	if st.ExitCode != 0 || !strings.Contains(log, " stdout F env DB_PASSWORD="+kbsMarker+"\n") {
		t.Errorf("workload A: exit code %d (%s), want 0 and the released secret:\n%s", st.ExitCode, st.Message, log)
	}
	st, log = runPodContainer(ctx, t, rt, sb.PodSandboxId, pod, logDir, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "kbs-b"},
		Image:    &runtimeapi.ImageSpec{Image: "example.com/kbs-b:v1"},
		LogPath:  "kbs-b.log",
	})
	if st.ExitCode != 1 || !strings.Contains(log, " stderr F "+k.refusal) || strings.Contains(log, kbsMarker) {
		t.Errorf("workload B: exit code %d (%s), want 1 and %q:\n%s", st.ExitCode, st.Message, k.refusal, log)
	}
	k.check(t)
}

// runPodContainer runs a container in the pod until it exits, removes it
// and returns its status and CRI log.
func runPodContainer(ctx context.Context, t *testing.T, rt runtimeapi.RuntimeServiceClient, podID string, pod *runtimeapi.PodSandboxConfig, logDir string, cfg *runtimeapi.ContainerConfig) (*runtimeapi.ContainerStatus, string) {
	t.Helper()
	cc, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: podID, SandboxConfig: pod, Config: cfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	defer func() {
		if _, err := rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: cc.ContainerId}); err != nil {
			t.Errorf("RemoveContainer: %v", err)
		}
	}()
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	for {
		r, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: cc.ContainerId})
		if err != nil {
			t.Fatalf("ContainerStatus: %v", err)
		}
		if st := r.Status; st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			log, _ := os.ReadFile(filepath.Join(logDir, cfg.LogPath))
			return st, string(log)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("container %s did not exit: %v", cfg.Metadata.Name, r.Status)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
