//go:build linux

package shim_test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	ggcrtypes "github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
	"github.com/castellan-dev/castellan/internal/keepimage"
	"github.com/castellan-dev/castellan/internal/shim"
	"github.com/castellan-dev/castellan/internal/workload"
)

const stdio = "[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"

// containerd is a containerd daemon of the test's own: its root, state,
// sockets and config in a temporary folder, the shim on its PATH.
type containerd struct {
	t              *testing.T
	dir, sock, bin string
	cmd            *exec.Cmd
	exe            string // the castellan binary the shim runs as
	ns             string // ctr's namespace

	image struct { // the VM keep image of c's tests (keepImage)
		once sync.Once
		dir  string
		err  error
	}
}

// startContainerd starts Debian's containerd (1.6) for the test, or skips
// when it cannot run here (CASTELLAN_REQUIRE_CONTAINERD=1, set by
// scripts/test, makes that a failure).
func startContainerd(t *testing.T) *containerd {
	t.Helper()
	return startContainerdWith(t, "")
}

// startContainerdWith starts containerd with extra config (TOML, %[1]s is
// the test's folder); a config that enables the CRI plugin leaves it on.
func startContainerdWith(t *testing.T, extra string) *containerd {
	t.Helper()
	skip := func(format string, a ...any) {
		t.Helper()
		if os.Getenv("CASTELLAN_REQUIRE_CONTAINERD") == "1" {
			t.Fatalf("containerd required (CASTELLAN_REQUIRE_CONTAINERD=1) but: "+format, a...)
		}
		t.Skipf("no containerd test: "+format+" (scripts/test installs Debian's containerd and runs this as root)", a...)
	}
	if testing.Short() {
		skip("-short")
	}
	if os.Geteuid() != 0 {
		skip("not root (containerd and its shims mount and need root)")
	}
	for _, b := range []string{"containerd", "ctr"} {
		if _, err := exec.LookPath(b); err != nil {
			skip("%s is not installed", b)
		}
	}
	dir, err := os.MkdirTemp("", "cstl-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	c := &containerd{t: t, dir: dir, sock: filepath.Join(dir, "c.sock"), bin: filepath.Join(dir, "bin"), ns: "castellan"}
	os.MkdirAll(c.bin, 0o755)
	c.exe = filepath.Join(c.bin, "castellan")
	root, _ := fixtures.RepoRoot()
	build := exec.Command("go", "build", "-o", c.exe, "./cmd/castellan")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("building castellan: %v\n%s", err, out)
	}
	if err := os.Symlink("castellan", filepath.Join(c.bin, shim.BinaryName)); err != nil {
		t.Fatal(err)
	}
	disabled := `disabled_plugins = ["io.containerd.grpc.v1.cri"]`
	if extra != "" {
		disabled = ""
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
`+disabled+`
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.sock, c.sock+".ttrpc", filepath.Join(dir, "debug.sock"))
	cfg += strings.ReplaceAll(extra, "%[1]s", dir)
	cfgPath := filepath.Join(dir, "config.toml")
	os.WriteFile(cfgPath, []byte(cfg), 0o644)
	logf, _ := os.Create(filepath.Join(dir, "containerd.log"))
	c.cmd = exec.Command("containerd", "--config", cfgPath)
	c.cmd.Env = append(os.Environ(), "PATH="+c.bin+":"+os.Getenv("PATH"))
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		skip("containerd does not start: %v", err)
	}
	t.Cleanup(c.stop)
	deadline := time.Now().Add(time.Minute)
	for {
		if _, err := exec.Command("ctr", "-a", c.sock, "version").CombinedOutput(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "containerd.log"))
			skip("containerd did not answer within a minute:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// stop ends containerd and checks that no shim or keep outlived it.
func (c *containerd) stop() {
	t := c.t
	// Containers the test left are removed the way an operator would.
	out, _ := c.ctr("tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		c.ctr("tasks", "kill", "-s", "SIGKILL", id)
		c.ctr("tasks", "delete", "-f", id)
	}
	out, _ = c.ctr("containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		c.ctr("containers", "delete", id)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	// Shims end when containerd deleted their containers; keeps with
	// them. Give them a moment, then any left is a failure.
	var left []string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if left = c.processes(); len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("processes left behind: %s", strings.Join(left, "; "))
		for _, p := range left {
			pid, _ := strconv.Atoi(strings.Fields(p)[0])
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	syscall.Unmount(filepath.Join(c.dir, "root"), syscall.MNT_DETACH)
	if t.Failed() {
		if b, err := os.ReadFile(filepath.Join(c.dir, "containerd.log")); err == nil {
			t.Logf("containerd log (last 4 KiB):\n%s", tail(b, 4096))
		}
	}
	os.RemoveAll(c.dir)
}

// processes lists live processes running the test's castellan binary (the
// shim daemons and process keeps) or containerd of this test.
func (c *containerd) processes() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if exe == c.exe || (pid == c.cmd.Process.Pid) {
			out = append(out, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
		}
	}
	return out
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// ctr runs ctr against the test's containerd, in namespace castellan.
func (c *containerd) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"-a", c.sock, "-n", c.ns}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// run is `ctr run --rm` through the shim; it returns the output and the
// exit status.
func (c *containerd) run(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := c.ctr(append([]string{"run", "--rm", "--runtime", shim.RuntimeType}, args...)...)
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	return out, code
}

// rootfsImage is an ordinary OCI image (linux/amd64, one tar layer) whose
// root filesystem holds the Wasm module as its entrypoint and, if cfg is
// set, an Enarx.toml beside it: the form runwasi's shims take.
func rootfsImage(t *testing.T, wasmPath string, cfg []byte) v1.Image {
	t.Helper()
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		tw.Write(b)
	}
	tw.WriteHeader(&tar.Header{Name: "app/", Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
	add("app/main.wasm", wasm)
	if cfg != nil {
		add("app/"+shim.ConfigFile, cfg)
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/app/main.wasm"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	return img
}

// importLayout writes img as an OCI layout, tars it and imports it with
// `ctr images import` under ref.
func (c *containerd) importLayout(t *testing.T, img v1.Image, ref string) {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": ref})); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(t.TempDir(), "image.tar")
	f, _ := os.Create(tarPath)
	tw := tar.NewWriter(f)
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Name: rel + "/", Mode: 0o755, Typeflag: tar.TypeDir})
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		_, err = tw.Write(b)
		return err
	})
	tw.Close()
	f.Close()
	if out, err := c.ctr("images", "import", "--base-name", strings.Split(ref, ":")[0], tarPath); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	if out, err := c.ctr("images", "ls", "-q"); err != nil || !strings.Contains(out, ref) {
		t.Fatalf("image %s not imported: %v\n%s", ref, err, out)
	}
}

// keepsWasmLayers says whether this containerd keeps image layers of
// media types it does not know (1.6.25+, 1.7.7+): older ones drop a
// castellan package's Wasm layer at pull, and ctr refuses to run an image
// whose config lists no root filesystem for its layers.
func keepsWasmLayers(t *testing.T) bool {
	out, err := exec.Command("containerd", "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	if len(f) < 3 {
		t.Fatalf("containerd --version: %q", out)
	}
	v := strings.TrimPrefix(strings.SplitN(f[2], "~", 2)[0], "v")
	var major, minor, patch int
	fmt.Sscanf(v, "%d.%d.%d", &major, &minor, &patch)
	ok := major > 1 || minor > 7 || (minor == 7 && patch >= 7) || (minor == 6 && patch >= 25)
	if !ok {
		msg := fmt.Sprintf("containerd %s drops Wasm layers at pull (1.6.25+ or 1.7.7+ keep them): castellan packages and Wasm-layer images cannot run through it", v)
		if os.Getenv("CASTELLAN_REQUIRE_WASM_LAYERS") == "1" {
			t.Fatalf("%s (CASTELLAN_REQUIRE_WASM_LAYERS=1: put a newer containerd and ctr first on the PATH)", msg)
		}
		t.Skip(msg)
	}
	return ok
}

// vmKeepImage builds a VM keep image (QEMU and a kernel needed; skipped
// with the reason otherwise, as the VM keep tests of internal/host are).
func vmKeepImage(t *testing.T) string {
	t.Helper()
	build := keepImageBuilder(t)
	dir := t.TempDir()
	if err := build(dir); err != nil {
		t.Fatalf("building the keep image: %v", err)
	}
	return dir
}

// keepImage is vmKeepImage built once for all of c's tests, in c's folder
// (the launcher only reads it).
func (c *containerd) keepImage(t *testing.T) string {
	t.Helper()
	build := keepImageBuilder(t)
	c.image.once.Do(func() {
		c.image.dir = filepath.Join(c.dir, "keep-image")
		c.image.err = build(c.image.dir)
	})
	if c.image.err != nil {
		t.Fatalf("building the keep image: %v", c.image.err)
	}
	return c.image.dir
}

// keepImageBuilder skips t when QEMU or a kernel is missing, else returns
// a function that builds a keep image into a folder.
func keepImageBuilder(t *testing.T) func(dir string) error {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 is not installed (scripts/test installs it)")
	}
	kernel, mods, err := keepimage.FindKernel()
	if err != nil {
		t.Skipf("no kernel for the keep image: %v (scripts/test fetches one)", err)
	}
	root, _ := fixtures.RepoRoot()
	return func(dir string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		_, err := keepimage.Build(ctx, keepimage.Options{Out: dir, Kernel: kernel, Modules: mods, Source: root})
		return err
	}
}

// startAttest runs `castellan attest serve` on loopback with the policy in
// dir (its state in dir/state) and returns its URL; it is stopped when the
// test ends.
func startAttest(t *testing.T, exe, dir string) string {
	u, _ := startAttestLog(t, exe, dir)
	return u
}

// startAttestLog is startAttest that also returns the service's log so far.
func startAttestLog(t *testing.T, exe, dir string) (string, func() string) {
	t.Helper()
	cmd := exec.Command(exe, "attest", "serve", "--listen", "127.0.0.1:0", "--policy", filepath.Join(dir, "policy.toml"),
		"--measurements", filepath.Join(dir, "measurements.toml"), "--state-dir", filepath.Join(dir, "state"), "--reload-interval", "200ms")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var mu sync.Mutex
	var logb strings.Builder
	urls := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			logb.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if _, rest, ok := strings.Cut(sc.Text(), "attestation service on "); ok {
				urls <- strings.Fields(rest)[0]
			}
		}
	}()
	logOf := func() string {
		mu.Lock()
		defer mu.Unlock()
		return logb.String()
	}
	select {
	case u := <-urls:
		return u, logOf
	case <-time.After(2 * time.Minute):
		t.Fatal("attest serve did not start within 2 minutes")
	}
	return "", nil
}

// kbsMarker is the value of the secret the kbs fixture's policy binds.
const kbsMarker = "kbs-marker-5e1d"

// kbsFixture is a real `castellan attest serve` whose policy trusts the
// local simulation root and binds a secret (kbs:///default/db/password)
// to workload A's digest, with images of A and B (hello, whose configs
// name the secret; B's differs, so its digest does) imported into c.
type kbsFixture struct {
	c        *containerd
	dir, url string
	digestB  string
	options  string // the shim's runtime options for the service
	refusal  string // what B's stderr says
	log      func() string
}

func newKBSFixture(t *testing.T, c *containerd, helloGo string) *kbsFixture {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command(c.exe, "attest", "dev-policy", "-o", dir).CombinedOutput(); err != nil {
		t.Fatalf("attest dev-policy: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(dir, "db-password"), []byte(kbsMarker), 0o600)
	secCfg := stdio + "[secrets]\nenv = [\"DB_PASSWORD\"]\n[secrets.kbs]\nDB_PASSWORD = \"kbs:///default/db/password\"\n"
	otherCfg := stdio + "[env]\nOTHER = \"1\"\n" + secCfg[len(stdio):]
	wasm, _ := os.ReadFile(helloGo)
	artA, err := workload.New(wasm, []byte(secCfg))
	if err != nil {
		t.Fatal(err)
	}
	artB, _ := workload.New(wasm, []byte(otherCfg))
	pol, _ := os.ReadFile(filepath.Join(dir, "policy.toml"))
	pol = append(pol, fmt.Sprintf("\n[[secret]]\nresource = \"default/db/password\"\nfile = \"db-password\"\nworkloads = [%q]\n", artA.Digest)...)
	os.WriteFile(filepath.Join(dir, "policy.toml"), pol, 0o644)
	k := &kbsFixture{c: c, dir: dir, digestB: artB.Digest.String()}
	k.url, k.log = startAttestLog(t, c.exe, dir)
	c.importLayout(t, rootfsImage(t, helloGo, []byte(secCfg)), "example.com/kbs-a:v1")
	c.importLayout(t, rootfsImage(t, helloGo, []byte(otherCfg)), "example.com/kbs-b:v1")
	k.options = fmt.Sprintf("backend = \"sim-snp\"\nattest = %q\nattest_ca = %q\nallow_insecure = true\n", k.url, filepath.Join(dir, "state", "ca.pem"))
	k.refusal = fmt.Sprintf("castellan: error: the keep refused the delivery: secret DB_PASSWORD from %s: kbs:///default/db/password: kbs refused (PolicyDeny): secret kbs:///default/db/password is not released to workload %s", k.url, artB.Digest)
	return k
}

// check checks that the service audited the release to A and the refusal
// of B, and that the value is in no log and no file of the service or of
// containerd (the shim's log goes to containerd's).
func (k *kbsFixture) check(t *testing.T) {
	t.Helper()
	for _, want := range []string{
		"released kbs:///default/db/password to 127.0.0.1:",
		"refused 127.0.0.1:",
		"(secret): secret kbs:///default/db/password is not released to workload " + k.digestB,
	} {
		if !strings.Contains(k.log(), want) {
			t.Errorf("the service's log lacks %q:\n%s", want, k.log())
		}
	}
	// The audit log (the service's SQLite database) records the release
	// to A and the refusal of B.
	db, err := audit.Open(context.Background(), "sqlite:"+filepath.Join(k.dir, "state", "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := db.Recent(context.Background(), 100)
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	var released, refused bool
	for _, r := range recs {
		released = released || r.Accepted && r.Package == "kbs:///default/db/password"
		refused = refused || !r.Accepted && r.Check == "secret" && r.Package == "kbs:///default/db/password" &&
			strings.Contains(r.Reason, "is not released to workload "+k.digestB)
	}
	if !released || !refused {
		t.Errorf("the audit log lacks the release (%v) or the refusal (%v): %+v", released, refused, recs)
	}
	for _, where := range []string{filepath.Join(k.dir, "state"), k.c.dir} {
		filepath.WalkDir(where, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(kbsMarker)) {
				t.Errorf("the secret's value is in %s", p)
			}
			return nil
		})
	}
	if strings.Contains(k.log(), kbsMarker) {
		t.Error("the secret's value is in the service's log")
	}
}

// loopbackRegistry is go-containerregistry's registry on loopback, as the
// package tests use.
func loopbackRegistry(t *testing.T) string {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return u.Host
}

func TestContainerd(t *testing.T) {
	c := startContainerd(t)
	helloGo := fixtures.Go(t, "hello")

	t.Run("hello from an imported OCI layout", func(t *testing.T) {
		c.importLayout(t, rootfsImage(t, fixtures.C(t, "hello"), nil), "example.com/hello-c:v1")
		out, code := c.run(t, "example.com/hello-c:v1", "hello1", "/app/main.wasm", "one", "two")
		if code != 0 {
			t.Fatalf("exit status %d, want 0\n%s", code, out)
		}
		for _, want := range []string{"hello from C in a keep", "arg[1]=one", "arg[2]=two"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("exit status and environment", func(t *testing.T) {
		c.importLayout(t, rootfsImage(t, helloGo, nil), "example.com/hello-go:v1")
		out, code := c.run(t, "--env", "EXIT_CODE=3", "--env", "GREETING=hi there", "example.com/hello-go:v1", "hello2")
		if code != 3 {
			t.Fatalf("exit status %d, want 3\n%s", code, out)
		}
		if !strings.Contains(out, "env GREETING=hi there") || !strings.Contains(out, "hello from a keep") {
			t.Errorf("output lacks the greeting or the environment:\n%s", out)
		}
	})

	t.Run("Enarx.toml beside the entrypoint", func(t *testing.T) {
		cfg := []byte("args = [\"from-config\"]\n[[files]]\nkind = \"stdin\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n[env]\nEXIT_CODE = \"5\"\n")
		c.importLayout(t, rootfsImage(t, helloGo, cfg), "example.com/hello-cfg:v1")
		out, code := c.run(t, "--env", "EXIT_CODE=9", "example.com/hello-cfg:v1", "hello3")
		if code != 5 {
			t.Fatalf("exit status %d, want 5 (the config's, not the spec's)\n%s", code, out)
		}
		if !strings.Contains(out, "from-config") {
			t.Errorf("output lacks the config's argument:\n%s", out)
		}
	})

	t.Run("pulled from a registry on loopback", func(t *testing.T) {
		host := loopbackRegistry(t)
		ref := host + "/wasm/hello:v1"
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, rootfsImage(t, fixtures.C(t, "hello"), nil)); err != nil {
			t.Fatal(err)
		}
		if out, err := c.ctr("images", "pull", "--plain-http", ref); err != nil {
			t.Fatalf("ctr images pull: %v\n%s", err, out)
		}
		out, code := c.run(t, ref, "hello4")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
	})

	t.Run("castellan package from a registry", func(t *testing.T) {
		// The package as `castellan package push --image` publishes it
		// for containerd: its layers under an OCI image config.
		host := loopbackRegistry(t)
		ref := host + "/pkg/hello:v1"
		dir := t.TempDir()
		store := filepath.Join(dir, "store")
		os.WriteFile(filepath.Join(dir, "Enarx.toml"), []byte(stdio), 0o644)
		built, err := exec.Command(c.exe, "package", "build", "--store", store, "-c", filepath.Join(dir, "Enarx.toml"), "-t", ref, fixtures.C(t, "hello")).Output()
		if err != nil {
			t.Fatalf("package build: %v", err)
		}
		pushed, err := exec.Command(c.exe, "package", "push", "--store", store, "--plain-http", "--image", ref).Output()
		lines := strings.Fields(string(pushed))
		if err != nil || len(lines) != 3 || lines[0] != strings.TrimSpace(string(built)) || lines[1] != "image" {
			t.Fatalf("package push --image: %v\n%s; want the workload digest %s, then the image's", err, pushed, built)
		}
		// The package's own form (the CNCF Wasm artifact) beside it.
		artRef := host + "/pkg/hello:artifact"
		if out, err := exec.Command(c.exe, "package", "push", "--store", store, "--plain-http", ref, artRef).CombinedOutput(); err != nil {
			t.Fatalf("package push: %v\n%s", err, out)
		}
		if !keepsWasmLayers(t) {
			return
		}
		if out, err := c.ctr("images", "pull", "--plain-http", "--all-platforms", ref); err != nil {
			t.Fatalf("ctr images pull: %v\n%s", err, out)
		}
		out, code := c.run(t, ref, "pkg1", "main.wasm", "x")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") || !strings.Contains(out, "arg[1]=x") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
		// containerd's image code refuses the artifact's config media type
		// (docs/kubernetes.md says so: push --image for containerd).
		if out, err := c.ctr("images", "pull", "--plain-http", "--all-platforms", artRef); err != nil {
			t.Fatalf("ctr images pull of the artifact form: %v\n%s", err, out)
		}
		out, code = c.run(t, artRef, "pkg2", "main.wasm")
		if code == 0 || !strings.Contains(out, "application/vnd.wasm.config.v0+json") {
			t.Fatalf("the artifact form ran through containerd (exit %d): docs/kubernetes.md says it does not\n%s", code, out)
		}
	})

	t.Run("a Wasm-layer image from a registry", func(t *testing.T) {
		// An OCI image whose one layer is the module itself, of the media
		// type runwasi's shims read, with a wasip1/wasm config.
		wasm, err := os.ReadFile(fixtures.C(t, "hello"))
		if err != nil {
			t.Fatal(err)
		}
		img, err := mutate.AppendLayers(empty.Image, static.NewLayer(wasm, ggcrtypes.MediaType(shim.MediaTypeWasmComponentLayer)))
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = "wasip1", "wasm"
		cf.Config.Entrypoint = []string{"main.wasm"}
		// No root filesystem: the layer is no tar to unpack (containerd
		// 1.6.25+ and 1.7.7+ then run such an image).
		cf.RootFS.DiffIDs = nil
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		ref := loopbackRegistry(t) + "/wasm/hello:v1"
		r, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		if !keepsWasmLayers(t) {
			return
		}
		if out, err := c.ctr("images", "pull", "--plain-http", "--all-platforms", ref); err != nil {
			t.Fatalf("ctr images pull: %v\n%s", err, out)
		}
		out, code := c.run(t, ref, "wasmlayer1", "main.wasm", "y")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") || !strings.Contains(out, "arg[1]=y") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
	})

	t.Run("runtime options: a sim-snp keep", func(t *testing.T) {
		opts := filepath.Join(t.TempDir(), "shim.toml")
		os.WriteFile(opts, []byte("keep = \"process\"\nbackend = \"sim-snp\"\n"), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", "opts1")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
	})

	t.Run("runtime options: a compilation cache for nil keeps only", func(t *testing.T) {
		for i, tc := range []struct {
			backend string
			cached  bool
		}{{"nil", true}, {"sim-snp", false}} {
			dir := t.TempDir()
			cache := filepath.Join(dir, "cache")
			opts := filepath.Join(dir, "shim.toml")
			os.WriteFile(opts, []byte(fmt.Sprintf("backend = %q\nkeep_cache_dir = %q\n", tc.backend, cache)), 0o644)
			for j := 0; j < 2; j++ {
				out, code := c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", fmt.Sprintf("cache%d-%d", i, j))
				if code != 0 || !strings.Contains(out, "hello from C in a keep") {
					t.Fatalf("backend %s: exit status %d, output:\n%s", tc.backend, code, out)
				}
			}
			ents, _ := os.ReadDir(cache)
			if cached := len(ents) > 0; cached != tc.cached {
				t.Errorf("backend %s: compilation cache used: %v, want %v", tc.backend, cached, tc.cached)
			}
		}
	})

	t.Run("runtime options: the backend and the attestation service are used", func(t *testing.T) {
		for i, tc := range []struct{ opts, want string }{
			{"backend = \"snp\"\n", "backend snp: "},
			{"attest = \"https://127.0.0.1:1\"\n", "nonce from the attestation service: "},
		} {
			opts := filepath.Join(t.TempDir(), "shim.toml")
			os.WriteFile(opts, []byte(tc.opts), 0o644)
			id := fmt.Sprintf("opts-used%d", i)
			out, code := c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", id)
			if code == 0 || !strings.Contains(out, tc.want) {
				t.Errorf("%s: exit status %d, want an error with %q:\n%s", tc.opts, code, tc.want, out)
			}
			c.ctr("containers", "delete", id)
		}
	})

	t.Run("runtime options: refused", func(t *testing.T) {
		opts := filepath.Join(t.TempDir(), "shim.toml")
		os.WriteFile(opts, []byte("backend = \"sgx9\"\n"), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", "opts2")
		if code == 0 || !strings.Contains(out, "runtime options: "+opts+": backend \"sgx9\": want nil, sim-snp, sim-tdx, snp or tdx") {
			t.Fatalf("exit status %d, want a refusal naming the options file:\n%s", code, out)
		}
		c.ctr("containers", "delete", "opts2")
	})

	t.Run("a VM keep", func(t *testing.T) {
		img := c.keepImage(t)
		opts := filepath.Join(t.TempDir(), "shim.toml")
		os.WriteFile(opts, []byte(fmt.Sprintf("keep = \"vm\"\nbackend = \"nil\"\nkeep_image = %q\n", img)), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "--memory-limit", strconv.Itoa(300<<20), "example.com/hello-c:v1", "vm1", "/app/main.wasm", "in-a-vm")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") || !strings.Contains(out, "arg[1]=in-a-vm") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
	})

	t.Run("a VM keep with volumes", func(t *testing.T) {
		// One boot: the pod's read-only and read-write volumes reach the
		// VM through virtio-fs (a virtiofsd each, sandboxed in its folder);
		// the workload reads the one and writes the other, and a host link
		// out of the volume leads nowhere.
		if _, err := qemu.FindVirtiofsd(qemu.OS{}, ""); err != nil && os.Getenv("CI") == "" {
			t.Skipf("%v (scripts/test installs qemu-system-common)", err)
		}
		img := c.keepImage(t)
		c.importLayout(t, rootfsImage(t, fixtures.C(t, "volumes"), nil), "example.com/volumes-c:v1")
		base := t.TempDir()
		ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "rw")
		os.Mkdir(ro, 0o755)
		os.Mkdir(rw, 0o755)
		os.WriteFile(filepath.Join(ro, "in.txt"), []byte("from the pod\n"), 0o644)
		const secret = "the host's own\n"
		os.WriteFile(filepath.Join(base, "secret.txt"), []byte(secret), 0o600)
		os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(ro, "escape"))
		opts := filepath.Join(t.TempDir(), "shim.toml")
		os.WriteFile(opts, []byte(fmt.Sprintf("keep = \"vm\"\nbackend = \"nil\"\nkeep_image = %q\n", img)), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "--memory-limit", strconv.Itoa(300<<20),
			"--mount", "type=bind,src="+ro+",dst=/config,options=rbind:ro", "--mount", "type=bind,src="+rw+",dst=/data,options=rbind:rw",
			"example.com/volumes-c:v1", "vmvol", "/app/main.wasm", "/config", "/data")
		for _, want := range []string{"read from the pod\n", "wrote out.txt\n", "read-only create refused\n", "escape refused\n", "done\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q", want)
			}
		}
		if code != 0 || strings.Contains(out, secret) {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
		t.Logf("output:\n%s", out)
		if b, _ := os.ReadFile(filepath.Join(rw, "out.txt")); string(b) != "copied: from the pod\n" {
			t.Errorf("out.txt in the read-write volume: %q", b)
		}
		if ents, _ := os.ReadDir(ro); len(ents) != 2 {
			t.Errorf("the read-only volume changed: %v", ents)
		}
		// No virtiofsd of this keep is left.
		procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, p := range procs {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(base)) {
				t.Errorf("%s is left behind: %q", filepath.Dir(p), b)
			}
		}
	})

	t.Run("attested by attest serve", func(t *testing.T) {
		dir := t.TempDir()
		if out, err := exec.Command(c.exe, "attest", "dev-policy", "-o", dir).CombinedOutput(); err != nil {
			t.Fatalf("attest dev-policy: %v\n%s", err, out)
		}
		url := startAttest(t, c.exe, dir)
		base := fmt.Sprintf("backend = \"sim-snp\"\nattest = %q\nattest_ca = %q\n", url, filepath.Join(dir, "state", "ca.pem"))
		opts := filepath.Join(t.TempDir(), "shim.toml")
		// The service certifies a simulated keep as insecure: refused
		// unless the options allow it.
		os.WriteFile(opts, []byte(base), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", "att0")
		if code == 0 || strings.Contains(out, "hello from C") || !strings.Contains(out, "insecure keeps are not allowed") {
			t.Fatalf("exit status %d, want a refusal of the insecure keep:\n%s", code, out)
		}
		os.WriteFile(opts, []byte(base+"allow_insecure = true\n"), 0o644)
		out, code = c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", "att1")
		if code != 0 || !strings.Contains(out, "hello from C in a keep") {
			t.Fatalf("exit status %d, output:\n%s", code, out)
		}
		// A policy that names another workload refuses the keep: the
		// workload never runs.
		pol, _ := os.ReadFile(filepath.Join(dir, "policy.toml"))
		other := "sha256:" + strings.Repeat("ab", 32)
		os.WriteFile(filepath.Join(dir, "policy.toml"), bytes.Replace(pol, []byte(`workloads = ["any"]`), []byte(`workloads = ["`+other+`"]`), 1), 0o644)
		// The service reloads its policy every 200ms; until it did, keeps
		// still run.
		for i, deadline := 2, time.Now().Add(2*time.Minute); ; i++ {
			out, code = c.run(t, "--runtime-config-path", opts, "example.com/hello-c:v1", fmt.Sprintf("att%d", i))
			if code != 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if code == 0 || strings.Contains(out, "hello from C in a keep") || !strings.Contains(out, "castellan: error: keep evidence refused (workload)") {
			t.Fatalf("exit status %d, want a refusal naming the workload:\n%s", code, out)
		}
		t.Logf("refused: %s", strings.TrimSpace(out))
	})

	t.Run("secrets released to an attested keep", func(t *testing.T) {
		// The owner's policy binds a secret to workload A's digest; A's
		// config names it by kbs:/// reference. The keep attests to the
		// service itself and gets the value encrypted to its key; B
		// (another config, so another digest) is refused it.
		k := newKBSFixture(t, c, helloGo)
		opts := filepath.Join(t.TempDir(), "shim.toml")
		os.WriteFile(opts, []byte(k.options), 0o644)
		out, code := c.run(t, "--runtime-config-path", opts, "example.com/kbs-a:v1", "kbs-a")
		if code != 0 || !strings.Contains(out, "env DB_PASSWORD="+kbsMarker+"\n") {
			t.Fatalf("workload A: exit status %d, want 0 and the released secret in its environment:\n%s", code, out)
		}
		out, code = c.run(t, "--runtime-config-path", opts, "example.com/kbs-b:v1", "kbs-b")
		if code != 1 || !strings.Contains(out, k.refusal) || strings.Contains(out, kbsMarker) || strings.Contains(out, "hello from a keep") {
			t.Fatalf("workload B: exit status %d, want 1 and %q, without the secret or the workload's output:\n%s", code, k.refusal, out)
		}
		t.Logf("workload B refused: %s", strings.TrimSpace(out))
		k.check(t)
		// A config naming kbs:/// secrets needs an attestation service
		// and a keep with evidence: refused at create.
		os.WriteFile(opts, []byte("backend = \"sim-snp\"\n"), 0o644)
		out, code = c.run(t, "--runtime-config-path", opts, "example.com/kbs-a:v1", "kbs-c")
		if code == 0 || !strings.Contains(out, "the runtime options name no attestation service (attest)") {
			t.Fatalf("exit status %d, want a refusal naming the missing attest option:\n%s", code, out)
		}
		c.ctr("containers", "delete", "kbs-c")
	})

	t.Run("secrets released to an attested VM keep", func(t *testing.T) {
		testVMKeepSecrets(t, c, helloGo)
	})

	t.Run("volumes as preopened folders", func(t *testing.T) {
		// ctr's bind mounts, as Kubernetes' volumes reach the shim: the
		// workload writes in a read-write one (its escapes refused) and
		// reads a read-only one. TestServiceVolumes checks the details.
		c.importLayout(t, rootfsImage(t, fixtures.Go(t, "fileio"), nil), "example.com/fileio:v1")
		base := t.TempDir()
		rw, ro := filepath.Join(base, "rw"), filepath.Join(base, "ro")
		os.Mkdir(rw, 0o755)
		os.Mkdir(ro, 0o755)
		os.WriteFile(filepath.Join(base, "outside.txt"), []byte("outside\n"), 0o644)
		os.Symlink(filepath.Join(base, "outside.txt"), filepath.Join(rw, "hostabs"))
		os.WriteFile(filepath.Join(ro, "ro.txt"), []byte("read only\n"), 0o644)
		out, code := c.run(t, "--mount", "type=bind,src="+rw+",dst=/data,options=rbind:rw", "--env", "DIR=/data", "example.com/fileio:v1", "vol1")
		if code != 0 || !strings.Contains(out, "ok read via symlink out refused") || !strings.Contains(out, "ok read via absolute symlink refused") || !strings.Contains(out, "done\n") {
			t.Fatalf("read-write volume: exit status %d:\n%s", code, out)
		}
		if target, err := os.Readlink(filepath.Join(rw, "link")); err != nil || target != "sub/b.txt" {
			t.Errorf("the workload's link in the host folder: %q %v", target, err)
		}
		out, code = c.run(t, "--mount", "type=bind,src="+ro+",dst=/config,options=rbind:ro", "--env", "DIR=/config", "--env", "RO=1", "example.com/fileio:v1", "vol2")
		if code != 0 || !strings.Contains(out, "ok read\n") || !strings.Contains(out, "ok create refused") || !strings.Contains(out, "done\n") {
			t.Fatalf("read-only volume: exit status %d:\n%s", code, out)
		}
		if ents, _ := os.ReadDir(ro); len(ents) != 1 {
			t.Errorf("the read-only volume changed: %v", ents)
		}
	})

	t.Run("not a Wasm module", func(t *testing.T) {
		notWasm := filepath.Join(t.TempDir(), "x.wasm")
		os.WriteFile(notWasm, []byte("#!/bin/sh\necho hi\n"), 0o755)
		c.importLayout(t, rootfsImage(t, notWasm, nil), "example.com/not-wasm:v1")
		out, code := c.run(t, "example.com/not-wasm:v1", "bad1")
		if code == 0 || !strings.Contains(out, "not a Wasm module") {
			t.Fatalf("exit status %d, want a refusal naming the entrypoint:\n%s", code, out)
		}
		c.ctr("containers", "delete", "bad1")
	})

	t.Run("kill a long-running keep", func(t *testing.T) {
		c.importLayout(t, rootfsImage(t, fixtures.C(t, "spin"), nil), "example.com/spin:v1")
		logPath := filepath.Join(t.TempDir(), "spin.log")
		if out, err := c.ctr("run", "-d", "--runtime", shim.RuntimeType, "--cpus", "0.5", "--log-uri", "file://"+logPath, "example.com/spin:v1", "spin1"); err != nil {
			t.Fatalf("ctr run -d: %v\n%s", err, out)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			b, _ := os.ReadFile(logPath)
			if strings.Contains(string(b), "spinning") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no output from the spinning keep within 2 minutes: %q", b)
			}
			time.Sleep(50 * time.Millisecond)
		}
		before := c.processes()
		if len(before) < 2 {
			t.Fatalf("want a shim and a keep running, found %v", before)
		}
		// The pod's CPU limit is the process keep's cgroup's cpu.max.
		for _, p := range before {
			if !strings.Contains(p, " keep --dir ") {
				continue
			}
			cg, _ := os.ReadFile(filepath.Join("/proc", strings.Fields(p)[0], "cgroup"))
			rel := ""
			for _, l := range strings.Split(string(cg), "\n") {
				if strings.HasPrefix(l, "0::") && len(strings.Split(string(cg), "\n")) <= 2 {
					rel = strings.TrimPrefix(l, "0::")
				}
			}
			if !strings.Contains(rel, "/castellan-keeps/") {
				t.Logf("the keep has no cgroup v2 of its own here (not a cgroups v2 host, or the shim's cgroup is not writable): cpu.max not checked")
				break
			}
			if b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", rel, "cpu.max")); err != nil || strings.TrimSpace(string(b)) != "50000 100000" {
				t.Errorf("keep cgroup %s: cpu.max %q (%v), want \"50000 100000\" (--cpus 0.5)", rel, b, err)
			}
		}
		if out, err := c.ctr("tasks", "kill", "-s", "SIGKILL", "spin1"); err != nil {
			t.Fatalf("ctr tasks kill: %v\n%s", err, out)
		}
		deadline = time.Now().Add(2 * time.Minute)
		for {
			out, _ := c.ctr("tasks", "ls")
			if strings.Contains(out, "STOPPED") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the keep did not stop within 2 minutes:\n%s", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if out, err := c.ctr("tasks", "delete", "spin1"); err != nil || !strings.Contains(out, "137") {
			t.Errorf("ctr tasks delete: %v, want exit status 137:\n%s", err, out)
		}
		c.ctr("containers", "delete", "spin1")
	})

	t.Run("memory limit hit", func(t *testing.T) {
		c.importLayout(t, rootfsImage(t, fixtures.Go(t, "memhog"), nil), "example.com/memhog:v1")
		out, code := c.run(t, "--memory-limit", strconv.Itoa(512<<20), "example.com/memhog:v1", "mem1")
		if code == 0 {
			t.Fatalf("exit status 0 under a 512 MiB limit:\n%s", out)
		}
		if !strings.Contains(out, "allocated MiB: 64") || strings.Contains(out, "allocated MiB: 512") {
			t.Errorf("want the workload to get past 64 MiB and stop before 512:\n%s", out)
		}
		if !strings.Contains(out, "castellan: error: memory limit of 536870912 bytes reached (fatal error: ") {
			t.Errorf("the container's stderr does not say the memory limit was reached:\n%s", out)
		}
		if strings.Contains(out, "goroutine ") {
			t.Errorf("the crash's goroutine stacks reached the container's stderr:\n%s", out)
		}
	})

	if t.Failed() {
		return
	}
	// Everything the subtests ran is gone: no keep and no shim runs (a
	// shim ends shortly after containerd deleted its container).
	left := c.processes()
	for deadline := time.Now().Add(2 * time.Minute); len(left) != 1 && time.Now().Before(deadline); left = c.processes() {
		time.Sleep(100 * time.Millisecond)
	}
	if len(left) != 1 {
		t.Errorf("after the containers were removed, want only containerd, found: %v", left)
	}
}
