//go:build linux

package shim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/workload"
)

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		in, err string
		want    Options
	}{
		{in: "", want: Options{Keep: "process", Backend: "nil"}},
		{in: `backend = "sim-snp"`, want: Options{Keep: "process", Backend: "sim-snp"}},
		{in: "keep = \"vm\"\nkeep_image = \"/var/lib/castellan/image\"\nbackend = \"snp\"\nfirmware = \"/fw\"\nattest = \"https://a:8443\"",
			want: Options{Keep: "vm", Backend: "snp", KeepImage: "/var/lib/castellan/image", Firmware: "/fw", Attest: "https://a:8443"}},
		{in: `keep = "vm"`, err: `keep = "vm" needs keep_image`},
		{in: `keep = "sandbox"`, err: `keep "sandbox": want process or vm`},
		{in: `backend = "auto"`, err: `backend "auto": want nil`},
		{in: `backend = "sgx2"`, err: `backend "sgx2": want nil`},
		{in: `keep_image = "/x"`, err: "keep_image and firmware apply to keep = \"vm\""},
		{in: `keep_cache_dir = "/var/cache/castellan"`, want: Options{Keep: "process", Backend: "nil", KeepCacheDir: "/var/cache/castellan"}},
		{in: "keep = \"vm\"\nkeep_image = \"/i\"\nkeep_cache_dir = \"/c\"", err: "keep_cache_dir applies to process keeps"},
		{in: `bakend = "nil"`, err: "unknown option bakend"},
		{in: `attest_ca = "ca.pem"`, err: `attest_ca "ca.pem": not an absolute path`},
		{in: `keep = 3`, err: "toml"},
		{in: `[[`, err: "toml"},
	} {
		o, err := ParseOptions([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if *o != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.in, *o, tc.want)
		}
	}
}

func FuzzParseOptions(f *testing.F) {
	f.Add([]byte(`backend = "sim-snp"`))
	f.Add([]byte("keep = \"vm\"\nkeep_image = \"/i\""))
	f.Add([]byte(`attest = "https://x"` + "\n" + `attest_ca = "/ca.pem"`))
	f.Add([]byte("keep = \"vm\"\nkeep_image = \"/i\"\nkeep_cache_dir = \"/c\""))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseOptions(b)
		if err != nil {
			return
		}
		if o.Keep != keep.KindProcess && o.Keep != keep.KindVM {
			t.Fatalf("accepted keep %q", o.Keep)
		}
		if o.Keep == keep.KindVM && o.KeepImage == "" {
			t.Fatal("accepted a vm keep without an image")
		}
		if o.Keep == keep.KindVM && o.KeepCacheDir != "" {
			t.Fatal("accepted a compilation cache for a vm keep")
		}
	})
}

func TestLimitsOf(t *testing.T) {
	i64 := func(v int64) *int64 { return &v }
	u64 := func(v uint64) *uint64 { return &v }
	spec := func(mem, quota int64, period uint64) *specs.Spec {
		r := &specs.LinuxResources{}
		if mem != 0 {
			r.Memory = &specs.LinuxMemory{Limit: i64(mem)}
		}
		if quota != 0 {
			r.CPU = &specs.LinuxCPU{Quota: i64(quota), Period: u64(period)}
		}
		return &specs.Spec{Linux: &specs.Linux{Resources: r}}
	}
	nofile := func(s *specs.Spec, hard uint64) *specs.Spec {
		s.Process = &specs.Process{Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_CORE"}, {Type: "RLIMIT_NOFILE", Soft: 1024, Hard: hard}}}
		return s
	}
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		kind string
		want keep.Limits
	}{
		{"no limits", &specs.Spec{}, keep.KindProcess, keep.Limits{OpenFiles: defaultOpenFiles}},
		{"process memory", spec(256<<20, 0, 0), keep.KindProcess, keep.Limits{MemoryBytes: 256 << 20, OpenFiles: defaultOpenFiles}},
		{"process cpu quota", spec(0, 150000, 100000), keep.KindProcess, keep.Limits{CPUQuotaMicros: 150000, CPUPeriodMicros: 100000, OpenFiles: defaultOpenFiles}},
		// The spec's RLIMIT_NOFILE (the node's rule), not the shim's own
		// (containerd's, often unlimited), bounds a process keep.
		{"the spec's RLIMIT_NOFILE", nofile(spec(0, 0, 0), 4096), keep.KindProcess, keep.Limits{OpenFiles: 4096}},
		{"the spec's RLIMIT_NOFILE, no resources", nofile(&specs.Spec{}, 65536), keep.KindProcess, keep.Limits{OpenFiles: 65536}},
		{"vm: no RLIMIT_NOFILE", nofile(spec(1<<30, 0, 0), 4096), keep.KindVM, keep.Limits{VMMemoryBytes: 1 << 30}},
		{"vm memory and cpus", spec(1<<30, 150000, 100000), keep.KindVM, keep.Limits{VMMemoryBytes: 1 << 30, VCPUs: 2}},
		{"vm memory rounded down to MiB", spec(300<<20+12345, 0, 0), keep.KindVM, keep.Limits{VMMemoryBytes: 300 << 20}},
		{"vm memory at least the minimum", spec(64<<20, 0, 0), keep.KindVM, keep.Limits{VMMemoryBytes: keep.MinVMMemory}},
		{"unlimited memory", spec(-1, 0, 0), keep.KindProcess, keep.Limits{OpenFiles: defaultOpenFiles}},
	} {
		if got := limitsOf(tc.spec, tc.kind); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestEnvConfig(t *testing.T) {
	b, err := envConfig([]string{"PATH=/usr/bin", "B=two words", "A=x=y", "FD_COUNT=9", "junk", `Q="quoted"`})
	if err != nil {
		t.Fatal(err)
	}
	c, err := config.Parse("env config", b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	want := map[string]string{"PATH": "/usr/bin", "B": "two words", "A": "x=y", "Q": `"quoted"`}
	if len(c.Env) != len(want) {
		t.Errorf("env %v, want %v", c.Env, want)
	}
	for k, v := range want {
		if c.Env[k] != v {
			t.Errorf("env %s = %q, want %q", k, c.Env[k], v)
		}
	}
	if len(c.Files) != 3 || c.Files[1].Kind != config.KindStdout {
		t.Errorf("files %+v, want stdin, stdout, stderr", c.Files)
	}
	if b, _ := envConfig(nil); b != nil {
		t.Errorf("no environment: config %q, want none", b)
	}
}

func TestFromRootfs(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	wasm := []byte("\x00asm\x01\x00\x00\x00")
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.WriteFile(filepath.Join(root, "app", "main.wasm"), wasm, 0o644)
	os.WriteFile(filepath.Join(root, "app", ConfigFile), []byte("args = [\"a\"]\n"), 0o644)
	os.WriteFile(filepath.Join(root, "plain.wasm"), wasm, 0o644)
	os.WriteFile(filepath.Join(root, "script"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(outside, "secret.wasm"), wasm, 0o644)
	os.Symlink(filepath.Join(outside, "secret.wasm"), filepath.Join(root, "abs-link.wasm"))
	os.Symlink("../../"+filepath.Base(outside)+"/secret.wasm", filepath.Join(root, "rel-link.wasm"))
	os.Symlink(filepath.Join(outside), filepath.Join(root, "linkdir"))
	os.Mkdir(filepath.Join(root, "dir.wasm"), 0o755)

	for _, tc := range []struct {
		args      []string
		cwd       string
		err       string
		hasConfig bool
	}{
		{args: []string{"/app/main.wasm"}, hasConfig: true},
		{args: []string{"main.wasm"}, cwd: "/app", hasConfig: true},
		{args: []string{"/plain.wasm", "x"}},
		{args: []string{"/script"}, err: "not a Wasm module"},
		{args: []string{"/missing.wasm"}, err: "no such file"},
		{args: []string{"/abs-link.wasm"}, err: "escapes"},
		{args: []string{"/rel-link.wasm"}, err: "escapes"},
		{args: []string{"/linkdir/secret.wasm"}, err: "escapes"},
		{args: []string{"/../../" + filepath.Base(outside) + "/secret.wasm"}, err: "no such file"},
		{args: []string{"/dir.wasm"}, err: "not a regular file"},
		{args: []string{"/"}, err: "not a file"},
		{args: nil, err: "no process args"},
	} {
		w, cfg, _, err := fromRootfs(root, &specs.Process{Args: tc.args, Cwd: tc.cwd})
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if string(w) != string(wasm) || (cfg != nil) != tc.hasConfig {
			t.Errorf("%v: wasm %q config %q", tc.args, w, cfg)
		}
	}
}

// TestFromRootfsSpecialFiles: an image whose entrypoint or Enarx.toml is
// a FIFO (or a device node) is refused without opening it: the open of a
// FIFO would block the shim's Create for good, and a device's open acts
// on the node's device.
func TestFromRootfsSpecialFiles(t *testing.T) {
	root := t.TempDir()
	wasm := []byte("\x00asm\x01\x00\x00\x00")
	os.MkdirAll(filepath.Join(root, "app"), 0o755)
	os.WriteFile(filepath.Join(root, "app", "main.wasm"), wasm, 0o644)
	if err := syscall.Mkfifo(filepath.Join(root, "fifo.wasm"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "app", ConfigFile), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("fifo.wasm", filepath.Join(root, "fifo-link.wasm"))
	cases := [][]string{{"/fifo.wasm"}, {"/fifo-link.wasm"}, {"/app/main.wasm"}}
	// A character device (the null device's numbers), where mknod is
	// allowed.
	if err := syscall.Mknod(filepath.Join(root, "dev.wasm"), syscall.S_IFCHR|0o644, 1<<8|3); err == nil {
		cases = append(cases, []string{"/dev.wasm"})
	}
	for _, args := range cases {
		done := make(chan error, 1)
		go func() {
			_, _, _, err := fromRootfs(root, &specs.Process{Args: args})
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("%v: error %v, want not a regular file", args, err)
			}
		case <-time.After(2 * time.Minute):
			t.Fatalf("%v: fromRootfs still blocked after 2 minutes (it opened a FIFO)", args)
		}
	}
}

// blobs is a fake content store.
type blobs map[string][]byte

func (b blobs) add(v []byte) string {
	d := digest.FromBytes(v).String()
	b[d] = v
	return d
}

func (b blobs) read(d string, max int64) ([]byte, error) {
	v, ok := b[d]
	if !ok {
		return nil, errors.New("not found")
	}
	if int64(len(v)) > max {
		return nil, errors.New("too big")
	}
	if digest.FromBytes(v).String() != d {
		return nil, errors.New("content does not match its digest")
	}
	return v, nil
}

func TestImageLayers(t *testing.T) {
	wasm := []byte("\x00asm\x01\x00\x00\x00")
	cfg := []byte("args = [\"a\"]\n")
	art, err := workload.New(wasm, cfg)
	if err != nil {
		t.Fatal(err)
	}
	manifest := func(b blobs, layers ...ocispec.Descriptor) string {
		m, _ := json.Marshal(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Layers: layers})
		return b.add(m)
	}
	layer := func(b blobs, mt string, v []byte) ocispec.Descriptor {
		return ocispec.Descriptor{MediaType: mt, Digest: digest.Digest(b.add(v)), Size: int64(len(v))}
	}

	t.Run("castellan package", func(t *testing.T) {
		b := blobs{}
		b.add(art.Wasm)
		b.add(art.Config)
		b.add(art.ConfigBlob)
		w, c, err := imageLayers(b.add(art.Manifest), b.read)
		if err != nil || string(w) != string(wasm) || string(c) != string(cfg) {
			t.Fatalf("wasm %q config %q: %v", w, c, err)
		}
		if again, _ := workload.New(w, c); again.Digest != art.Digest {
			t.Errorf("digest %s, want the package's %s", again.Digest, art.Digest)
		}
	})
	t.Run("image form whose annotation lies", func(t *testing.T) {
		// The manifest names the package's digest, over another
		// workload's layers: the digest is the layers', never the
		// annotation's.
		other, err := workload.New([]byte("\x00asm\x01\x00\x00\x00\x00\x01\x00"), nil)
		if err != nil {
			t.Fatal(err)
		}
		img, err := other.Image()
		if err != nil {
			t.Fatal(err)
		}
		var m ocispec.Manifest
		json.Unmarshal(img.Manifest, &m)
		m.Annotations[workload.AnnotationWorkloadDigest] = art.Digest.String()
		mb, _ := json.Marshal(m)
		b := blobs{}
		b.add(other.Wasm)
		b.add(img.Config)
		w, c, err := imageLayers(b.add(mb), b.read)
		if err != nil {
			t.Fatal(err)
		}
		got, err := workload.New(w, c)
		if err != nil || got.Digest != other.Digest {
			t.Errorf("digest %v %v, want the layers' %s (the annotation says %s)", got, err, other.Digest, art.Digest)
		}
	})
	t.Run("runwasi index with a wasi/wasm manifest", func(t *testing.T) {
		b := blobs{}
		m := manifest(b, layer(b, "application/vnd.oci.image.layer.v1.tar", []byte("tar")), layer(b, MediaTypeWasmComponentLayer, wasm))
		idx, _ := json.Marshal(ocispec.Index{Manifests: []ocispec.Descriptor{
			{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.Digest(manifest(b)), Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"}},
			{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.Digest(m), Platform: &ocispec.Platform{OS: "wasip1", Architecture: "wasm"}},
		}})
		w, c, err := imageLayers(b.add(idx), b.read)
		if err != nil || string(w) != string(wasm) || c != nil {
			t.Fatalf("wasm %q config %q: %v", w, c, err)
		}
	})
	t.Run("ordinary image: no Wasm layer", func(t *testing.T) {
		b := blobs{}
		w, _, err := imageLayers(manifest(b, layer(b, ocispec.MediaTypeImageLayerGzip, []byte("gz"))), b.read)
		if err != nil || w != nil {
			t.Fatalf("wasm %q: %v, want none", w, err)
		}
	})
	for _, tc := range []struct {
		name string
		make func(b blobs) string
		err  string
	}{
		{"two Wasm layers", func(b blobs) string {
			return manifest(b, layer(b, workload.MediaTypeWasm, wasm), layer(b, MediaTypeWasmModuleLayer, wasm))
		}, "more than one Wasm layer"},
		{"two config layers", func(b blobs) string {
			return manifest(b, layer(b, workload.MediaTypeWasm, wasm), layer(b, workload.MediaTypeTOML, cfg), layer(b, workload.MediaTypeTOML, cfg))
		}, "more than one workload config layer"},
		{"Wasm layer not in the store", func(b blobs) string {
			d := layer(b, workload.MediaTypeWasm, wasm)
			delete(b, d.Digest.String())
			return manifest(b, d)
		}, "does not keep such layers"},
		{"tampered Wasm layer", func(b blobs) string {
			d := layer(b, workload.MediaTypeWasm, wasm)
			b[d.Digest.String()] = []byte("\x00asm evil")
			return manifest(b, d)
		}, "does not match its digest"},
		{"manifest not JSON", func(b blobs) string { return b.add([]byte("{")) }, "manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := blobs{}
			_, _, err := imageLayers(tc.make(b), b.read)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
		})
	}
}

func FuzzPickManifest(f *testing.F) {
	f.Add([]byte(`{"schemaVersion":2,"layers":[{"mediaType":"application/wasm","digest":"sha256:00","size":1}]}`))
	f.Add([]byte(`{"manifests":[{"digest":"sha256:00","platform":{"architecture":"wasm","os":"wasip1"}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		read := func(string, int64) ([]byte, error) { return b, nil }
		pickManifest(b, read)
	})
}

// The daemon ends once its clients hung up, not before, and not after a
// fixed pause.
// fakeContent is containerd's content store as readContent sees it: one
// blob's size (Info) and its bytes in chunks (Read); more, when endless,
// streams chunks of its last one without end.
type fakeContent struct {
	contentapi.ContentClient
	size    int64
	chunks  [][]byte
	endless bool
}

func (f *fakeContent) Info(_ context.Context, in *contentapi.InfoRequest, _ ...grpc.CallOption) (*contentapi.InfoResponse, error) {
	return &contentapi.InfoResponse{Info: &contentapi.Info{Digest: in.Digest, Size: f.size}}, nil
}

func (f *fakeContent) Read(context.Context, *contentapi.ReadContentRequest, ...grpc.CallOption) (contentapi.Content_ReadClient, error) {
	return &fakeStream{chunks: f.chunks, endless: f.endless}, nil
}

type fakeStream struct {
	grpc.ClientStream
	chunks  [][]byte
	endless bool
	sent    int
}

func (s *fakeStream) Recv() (*contentapi.ReadContentResponse, error) {
	if s.endless && s.sent > 1<<20 {
		return nil, errors.New("readContent read on past its bound")
	}
	if len(s.chunks) == 0 {
		return nil, io.EOF
	}
	c := s.chunks[0]
	if !s.endless || len(s.chunks) > 1 {
		s.chunks = s.chunks[1:]
	}
	s.sent++
	return &contentapi.ReadContentResponse{Data: c}, nil
}

// TestReadContent: a blob from containerd's content store is checked
// against its digest and bounded whatever its Info says.
func TestReadContent(t *testing.T) {
	blob := []byte("\x00asm\x01\x00\x00\x00")
	d := digest.FromBytes(blob).String()
	ctx := context.Background()
	if b, err := readContent(ctx, &fakeContent{size: 8, chunks: [][]byte{blob[:3], blob[3:]}}, d, 8); err != nil || string(b) != string(blob) {
		t.Fatalf("readContent: %q %v", b, err)
	}
	for _, tc := range []struct {
		name string
		c    *fakeContent
		dgst string
		err  string
	}{
		{"too big by its Info", &fakeContent{size: 9, chunks: [][]byte{blob}}, d, "9 bytes, more than 8"},
		{"Info lies: small, then an endless stream", &fakeContent{size: 1, chunks: [][]byte{make([]byte, 4096)}, endless: true}, d, "more than 8 bytes"},
		{"tampered", &fakeContent{size: 8, chunks: [][]byte{[]byte("\x00asm\x01\x00\x00\x01")}}, d, "does not match its digest"},
		{"truncated", &fakeContent{size: 8, chunks: [][]byte{blob[:4]}}, d, "does not match its digest"},
		{"not a digest", &fakeContent{size: 8, chunks: [][]byte{blob}}, "sha256:00", "invalid"},
		{"unknown algorithm", &fakeContent{size: 8, chunks: [][]byte{blob}}, "md5:" + strings.Repeat("0", 32), "unsupported"},
	} {
		if _, err := readContent(ctx, tc.c, tc.dgst, 8); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestTrackedListener(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	tl := newTrackedListener(ln)
	defer tl.Close()
	// Nothing accepted: nothing to wait for.
	start := time.Now()
	tl.waitClosed(time.Minute)
	if d := time.Since(start); d > 30*time.Second {
		t.Fatalf("waitClosed with no connection took %v", d)
	}
	var clients, served []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		clients, served = append(clients, c), append(served, s)
	}
	// Open connections: waitClosed waits until its bound.
	start = time.Now()
	tl.waitClosed(50 * time.Millisecond)
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("waitClosed returned after %v with connections open", d)
	}
	// One closed twice counts once; the other closing ends the wait.
	served[0].Close()
	served[0].Close()
	done := make(chan struct{})
	go func() {
		tl.waitClosed(2 * time.Minute)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("waitClosed returned with a connection still open")
	case <-time.After(20 * time.Millisecond):
	}
	clients[1].Close()
	served[1].Close()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("waitClosed did not return once every connection closed")
	}
}

func TestVolumesOf(t *testing.T) {
	dir := t.TempDir()
	data, cfgDir, file := filepath.Join(dir, "data"), filepath.Join(dir, "cfg"), filepath.Join(dir, "hosts")
	os.Mkdir(data, 0o755)
	os.Mkdir(cfgDir, 0o755)
	os.WriteFile(file, nil, 0o644)
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/dev/shm", Type: "bind", Source: data, Options: []string{"rbind"}},
		{Destination: "/sys/fs/cgroup", Type: "bind", Source: data, Options: []string{"rbind", "ro"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs"},
		{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "rw"}},
		{Destination: "/etc/config", Source: cfgDir + "/", Options: []string{"rbind", "ro", "nosuid"}},
		{Destination: "/etc/hosts", Type: "bind", Source: file, Options: []string{"rbind", "ro"}},
		{Destination: "/missing", Type: "bind", Source: filepath.Join(dir, "missing"), Options: []string{"rbind"}},
		{Destination: "/a/../b", Type: "bind", Source: data, Options: []string{"rbind"}},
		{Destination: "relative", Type: "bind", Source: data, Options: []string{"rbind"}},
		{Destination: "/", Type: "bind", Source: data, Options: []string{"rbind"}},
		{Destination: "/rel-source", Type: "bind", Source: "data", Options: []string{"rbind"}},
		{Destination: "/data", Type: "bind", Source: cfgDir, Options: []string{"rbind"}},
		{Destination: "/recursive-ro", Type: "bind", Source: data, Options: []string{"rbind", "rprivate", "rro"}},
	}
	vols, skipped := volumesOf(mounts, keep.KindProcess)
	want := []keep.Volume{{Guest: "/data", Host: data}, {Guest: "/etc/config", Host: cfgDir, ReadOnly: true}, {Guest: "/recursive-ro", Host: data, ReadOnly: true}}
	if !reflect.DeepEqual(vols, want) {
		t.Errorf("volumes %+v, want %+v", vols, want)
	}
	for _, w := range []string{
		"mount /etc/hosts: a file, not a folder: not given to the workload",
		"mount /missing: stat " + filepath.Join(dir, "missing") + ": no such file or directory",
		`mount "/a/../b": the destination is not an absolute, clean path below /`,
		`mount "relative": the destination`,
		`mount "/": the destination`,
		`mount /rel-source: source "data" is not an absolute path`,
		"mount /data: mounted twice: the first one is given",
	} {
		if !strings.Contains(strings.Join(skipped, "\n"), w) {
			t.Errorf("skipped lacks %q:\n%s", w, strings.Join(skipped, "\n"))
		}
	}
	if len(skipped) != 7 {
		t.Errorf("%d skipped, want 7:\n%s", len(skipped), strings.Join(skipped, "\n"))
	}
	// A VM keep gets the same volumes (through virtio-fs), but for a
	// folder whose path holds a comma.
	vols, skipped = volumesOf(mounts, keep.KindVM)
	if !reflect.DeepEqual(vols, want) || len(skipped) != 7 {
		t.Errorf("VM keep: volumes %+v, skipped %q", vols, skipped)
	}
	comma := filepath.Join(dir, "a,b")
	os.Mkdir(comma, 0o755)
	vols, skipped = volumesOf([]specs.Mount{{Destination: "/c", Type: "bind", Source: comma, Options: []string{"rbind"}}}, keep.KindVM)
	if len(vols) != 0 || len(skipped) != 1 || !strings.Contains(skipped[0], "holds a comma, which virtiofsd's options cannot take") {
		t.Errorf("VM keep, a comma: volumes %+v, skipped %q", vols, skipped)
	}
}
