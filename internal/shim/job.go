package shim

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/pelletier/go-toml/v2"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/regularfile"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/workload"
)

// Annotations the CRI plugin sets on a pod's containers.
const (
	annotationContainerType = "io.kubernetes.cri.container-type"
	annotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	annotationImageName     = "io.kubernetes.cri.image-name"
)

// ConfigFile is the name of the workload config beside an image's
// entrypoint (Enarx's name).
const ConfigFile = "Enarx.toml"

// Bounds on what the shim reads from an image (the keep's own bounds).
const (
	maxWasm   = delivery.MaxWasmSize
	maxConfig = delivery.MaxConfigSize
)

// job is what a container runs: the package, its arguments, its keep's
// limits and how its evidence is checked.
type job struct {
	art      *workload.Artifact
	source   string // where the package came from, for the log
	name     string
	args     []string
	limits   keep.Limits
	opts     *Options
	verifier delivery.Verifier
	// secrets is whether the keep fetches its config's [secrets.kbs] from
	// the attestation service of the runtime options.
	secrets bool
	// volumes are the container's bind mounts of folders, preopened at
	// the same guest paths; skipped says which mounts were not given.
	volumes []keep.Volume
	skipped []string
}

// readSpec reads the bundle's OCI runtime spec.
func readSpec(bundle string) (*specs.Spec, error) {
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var s specs.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("bundle config.json: %w", err)
	}
	if s.Process == nil {
		return nil, errors.New("bundle config.json: no process")
	}
	return &s, nil
}

// newJob finds the container's workload (the image's Wasm layers through
// containerd, else the entrypoint in its rootfs) and maps the spec onto
// the keep.
func newJob(ctx context.Context, spec *specs.Spec, rootfs string, src *imageSource, opts *Options) (*job, error) {
	j := &job{opts: opts, name: spec.Annotations[annotationImageName]}
	wasm, cfg, source, err := src.wasmLayers(ctx)
	if err != nil {
		return nil, err
	}
	if wasm == nil {
		if wasm, cfg, source, err = fromRootfs(rootfs, spec.Process); err != nil {
			return nil, err
		}
	}
	if j.name == "" {
		j.name = src.imageName
	}
	if cfg == nil {
		// The image carries no config: the spec's environment makes one
		// (covered by the digest, as any config).
		if cfg, err = envConfig(spec.Process.Env); err != nil {
			return nil, err
		}
	}
	parsed, err := config.Parse("workload config", cfg)
	if err != nil {
		return nil, err
	}
	if parsed != nil && len(parsed.SecretRefs) > 0 {
		if err := opts.canFetchSecrets(); err != nil {
			return nil, err
		}
		j.secrets = true
	}
	if j.art, err = workload.New(wasm, cfg); err != nil {
		return nil, err
	}
	j.source = source
	if len(spec.Process.Args) > 1 {
		j.args = append([]string(nil), spec.Process.Args[1:]...)
	}
	j.limits = limitsOf(spec, opts.Keep)
	j.volumes, j.skipped = volumesOf(spec.Mounts, opts.Keep)
	if err := keep.CheckVolumes(j.volumes); err != nil {
		return nil, err
	}
	if j.verifier, err = opts.verifier(j.name); err != nil {
		return nil, err
	}
	return j, nil
}

// fromRootfs reads the entrypoint (process.args[0], relative to cwd) and
// the Enarx.toml beside it from the container's root filesystem, confined
// to it: an image's symbolic links cannot reach the node's files.
func fromRootfs(rootfs string, p *specs.Process) (wasm, cfg []byte, source string, err error) {
	if len(p.Args) == 0 {
		return nil, nil, "", errors.New("no process args (the image needs an entrypoint: its .wasm file)")
	}
	root, err := os.OpenRoot(rootfs)
	if err != nil {
		return nil, nil, "", fmt.Errorf("rootfs: %w", err)
	}
	defer root.Close()
	entry := p.Args[0]
	if !path.IsAbs(entry) {
		cwd := p.Cwd
		if cwd == "" {
			cwd = "/"
		}
		entry = path.Join(cwd, entry)
	}
	rel := strings.TrimPrefix(path.Clean(entry), "/")
	if rel == "" {
		return nil, nil, "", fmt.Errorf("entrypoint %q: not a file", p.Args[0])
	}
	wasm, err = readRoot(root, rel, maxWasm)
	if err != nil {
		return nil, nil, "", fmt.Errorf("entrypoint %s: %w", entry, err)
	}
	if !bytes.HasPrefix(wasm, []byte("\x00asm")) {
		return nil, nil, "", fmt.Errorf("entrypoint %s: not a Wasm module (no \\0asm magic)", entry)
	}
	cfgPath := path.Join(path.Dir(rel), ConfigFile)
	cfg, err = readRoot(root, cfgPath, maxConfig)
	if errors.Is(err, fs.ErrNotExist) {
		cfg, err = nil, nil
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("/%s: %w", cfgPath, err)
	}
	return wasm, cfg, "rootfs " + entry, nil
}

// readRoot reads a regular file of at most max bytes below root. It looks
// before it opens: an image's layers can hold FIFOs, whose open blocks
// (the shim would hang in Create), and device nodes, whose open acts on
// the node's device (a watchdog's arms it), outside the device rules a
// container would have. The open itself does not block (O_NONBLOCK) and
// must find the file it looked at.
func readRoot(root *os.Root, name string, max int64) ([]byte, error) {
	f, st, err := regularfile.Open(root, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st.Size() > max {
		return nil, fmt.Errorf("%d bytes, more than %d", st.Size(), max)
	}
	b := make([]byte, st.Size())
	if _, err := f.ReadAt(b, 0); err != nil && st.Size() > 0 {
		return nil, err
	}
	return b, nil
}

// stdioFiles are the descriptors of a config the shim writes: the
// container's standard streams.
const stdioFiles = `[[files]]
kind = "stdin"
[[files]]
kind = "stdout"
[[files]]
kind = "stderr"
`

// envConfig is the workload config of an image without one: standard
// descriptors and the spec's environment.
func envConfig(env []string) ([]byte, error) {
	m := map[string]string{}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || k == "FD_COUNT" || k == "FD_NAMES" {
			continue
		}
		m[k] = v
	}
	if len(m) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	b.WriteString(stdioFiles + "\n[env]\n")
	for _, k := range keys {
		kb, _ := toml.Marshal(map[string]string{k: m[k]})
		b.Write(kb)
	}
	return b.Bytes(), nil
}

// limitsOf maps the pod's resources onto the keep: the memory limit is the
// keep process's memory (RLIMIT_DATA, memory.max) or the VM's RAM; the CPU
// quota is a process keep's cpu.max or a VM keep's vCPUs (rounded up).
func limitsOf(spec *specs.Spec, kind string) keep.Limits {
	var l keep.Limits
	if spec.Linux == nil || spec.Linux.Resources == nil {
		if kind != keep.KindVM {
			l.OpenFiles = openFilesOf(spec.Process)
		}
		return l
	}
	r := spec.Linux.Resources
	var mem int64
	if r.Memory != nil && r.Memory.Limit != nil && *r.Memory.Limit > 0 {
		mem = *r.Memory.Limit
	}
	var vcpus int64
	if c := r.CPU; c != nil && c.Quota != nil && *c.Quota > 0 && c.Period != nil && *c.Period > 0 {
		vcpus = (*c.Quota + int64(*c.Period) - 1) / int64(*c.Period)
	}
	if kind == keep.KindVM {
		if mem > 0 {
			mem = max(mem&^(1<<20-1), keep.MinVMMemory)
		}
		l.VMMemoryBytes, l.VCPUs = mem, min(vcpus, 255)
		return l
	}
	l.MemoryBytes = mem
	l.OpenFiles = openFilesOf(spec.Process)
	if c := r.CPU; c != nil && c.Quota != nil && *c.Quota > 0 {
		l.CPUQuotaMicros = *c.Quota
		if c.Period != nil && *c.Period > 0 {
			l.CPUPeriodMicros = int64(*c.Period)
		}
	}
	return l
}

// defaultOpenFiles is a process keep's descriptors when the spec sets no
// RLIMIT_NOFILE: containerd's default spec's, and the host agent's.
const defaultOpenFiles = 1024

// openFilesOf is a process keep's RLIMIT_NOFILE: the spec's hard limit (the
// node's rule for its containers), else defaultOpenFiles. Without it the
// keep would inherit the shim's (containerd's, often unlimited), and a
// workload config's max_open_files (up to 2^20) could hold that many of
// the node's descriptors.
func openFilesOf(p *specs.Process) int64 {
	if p != nil {
		for _, r := range p.Rlimits {
			if r.Type == "RLIMIT_NOFILE" && r.Hard > 0 {
				return int64(min(r.Hard, math.MaxInt32))
			}
		}
	}
	return defaultOpenFiles
}

// systemMounts are the container's kernel and device folders: a runtime's
// mounts, not the pod's volumes.
var systemMounts = []string{"/dev", "/proc", "/sys"}

// volumesOf maps the container's volumes (bind mounts of host folders:
// Kubernetes' emptyDir, hostPath, configMap, secret and projected
// volumes) onto the keep's preopens at the same guest paths, read-only
// when the mount is. Mounts of single files (/etc/hosts, resolv.conf,
// termination logs) and of the kernel's folders are not given. A VM keep
// gets them through virtio-fs (internal/keep/qemu), except folders whose
// path holds a comma, which virtiofsd's options cannot take.
func volumesOf(mounts []specs.Mount, kind string) (vols []keep.Volume, skipped []string) {
	for _, m := range mounts {
		bind, ro := m.Type == "bind", false
		for _, o := range m.Options {
			switch o {
			case "bind", "rbind":
				bind = true
			case "ro", "rro":
				// rro (runtime-spec 1.1: recursively read-only) makes
				// the mount read-only too, whether or not ro is given.
				ro = true
			case "rw":
				ro = false
			}
		}
		dst := m.Destination
		if !bind || slices.ContainsFunc(systemMounts, func(s string) bool { return dst == s || strings.HasPrefix(dst, s+"/") }) {
			continue
		}
		if !path.IsAbs(dst) || path.Clean(dst) != dst || dst == "/" {
			skipped = append(skipped, fmt.Sprintf("mount %q: the destination is not an absolute, clean path below /", dst))
			continue
		}
		if !filepath.IsAbs(m.Source) {
			skipped = append(skipped, fmt.Sprintf("mount %s: source %q is not an absolute path", dst, m.Source))
			continue
		}
		src := filepath.Clean(m.Source)
		if st, err := os.Stat(src); err != nil || !st.IsDir() {
			if err == nil {
				err = errors.New("a file, not a folder")
			}
			skipped = append(skipped, fmt.Sprintf("mount %s: %v: not given to the workload", dst, err))
			continue
		}
		if kind == keep.KindVM && strings.Contains(src, ",") {
			skipped = append(skipped, fmt.Sprintf("mount %s: source %q holds a comma, which virtiofsd's options cannot take: not given to the workload", dst, src))
			continue
		}
		if slices.ContainsFunc(vols, func(v keep.Volume) bool { return v.Guest == dst }) {
			skipped = append(skipped, fmt.Sprintf("mount %s: mounted twice: the first one is given", dst))
			continue
		}
		vols = append(vols, keep.Volume{Guest: dst, Host: src, ReadOnly: ro})
	}
	if len(vols) > keep.MaxVolumes {
		skipped = append(skipped, fmt.Sprintf("%d volumes, more than %d: the last %d are not given", len(vols), keep.MaxVolumes, len(vols)-keep.MaxVolumes))
		vols = vols[:keep.MaxVolumes]
	}
	return vols, skipped
}

// Options are the shim's settings for a runtime handler: the keep kind,
// the evidence backend and the attestation service. They come from
// containerd's runtime options (ConfigPath or the options table), so the
// node's administrator picks them per RuntimeClass, not the pod's author.
type Options struct {
	Keep     string `toml:"keep"`      // process (default) or vm
	Backend  string `toml:"backend"`   // nil (default), sim-snp, sim-tdx, snp, tdx
	Attest   string `toml:"attest"`    // attestation service URL; empty: signatures and bindings only
	AttestCA string `toml:"attest_ca"` // PEM roots of the service's TLS certificate
	// AllowInsecure accepts keeps the service certified as insecure (the
	// nil backend, simulated evidence): for trying things out only.
	AllowInsecure bool   `toml:"allow_insecure"`
	KeepImage     string `toml:"keep_image"` // VM keeps: the keep image folder
	Firmware      string `toml:"firmware"`   // VM keeps of snp or tdx: the firmware
	// KeepCacheDir is a compilation cache for process keeps of the nil
	// backend only, as the host agent's --keep-cache-dir: a cache on the
	// node's disk is open to the node, so TEE keeps never use it.
	KeepCacheDir string `toml:"keep_cache_dir"`
}

func (o *Options) check() error {
	if o.Keep == "" {
		o.Keep = keep.KindProcess
	}
	if o.Backend == "" {
		o.Backend = tee.NameNil
	}
	if o.Keep != keep.KindProcess && o.Keep != keep.KindVM {
		return fmt.Errorf("keep %q: want %s", o.Keep, strings.Join(keep.Kinds(), " or "))
	}
	if _, err := tee.New(o.Backend); err != nil || o.Backend == tee.NameAuto {
		return fmt.Errorf("backend %q: want nil, sim-snp, sim-tdx, snp or tdx", o.Backend)
	}
	if o.Keep == keep.KindVM && o.KeepImage == "" {
		return errors.New("keep = \"vm\" needs keep_image (a folder made by 'castellan keep-image build')")
	}
	if o.Keep == keep.KindProcess && (o.KeepImage != "" || o.Firmware != "") {
		return errors.New("keep_image and firmware apply to keep = \"vm\"")
	}
	if o.Keep == keep.KindVM && o.KeepCacheDir != "" {
		return errors.New("keep_cache_dir applies to process keeps: a VM keep compiles inside its VM")
	}
	// A keep opens attest_ca itself (from its own folder), as the shim
	// does (from the bundle): only an absolute path means one file.
	if o.AttestCA != "" && !filepath.IsAbs(o.AttestCA) {
		return fmt.Errorf("attest_ca %q: not an absolute path", o.AttestCA)
	}
	return nil
}

// ParseOptions parses the shim's options (TOML), strictly.
func ParseOptions(b []byte) (*Options, error) {
	var o Options
	d := toml.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&o); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return nil, fmt.Errorf("unknown option %s", strings.Join(sm.Errors[0].Key(), "."))
		}
		return nil, err
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return &o, nil
}

// verifier checks a keep's evidence: through the attestation service
// when one is named, else signatures and bindings only (this node's
// simulation roots included).
func (o *Options) verifier(name string) (delivery.Verifier, error) {
	if o.Attest == "" {
		iv := &delivery.InsecureVerifier{}
		if roots, _, err := tee.SimRoots(); err == nil {
			iv.SimRoots = roots
		}
		return iv, nil
	}
	sv := &delivery.ServiceVerifier{URL: o.Attest, Package: name, AllowInsecure: o.AllowInsecure}
	pem, err := o.attestCA()
	if err != nil {
		return nil, err
	}
	if pem != nil {
		sv.Roots = x509.NewCertPool()
		sv.Roots.AppendCertsFromPEM(pem)
	}
	return sv, nil
}

// attestCA reads attest_ca (nil: none named, the system's roots).
func (o *Options) attestCA() ([]byte, error) {
	if o.AttestCA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(o.AttestCA)
	if err != nil {
		return nil, fmt.Errorf("attest_ca: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("attest_ca: %s: no PEM certificate in it", o.AttestCA)
	}
	return pem, nil
}

// canFetchSecrets says whether a keep whose config names secrets by
// kbs:/// reference can fetch them: from the attestation service, which
// binds them to workload digests. The keep attests to it itself, so it
// needs evidence (not the nil backend); a process keep connects to it over
// the network, a VM keep (no network) through the relay its launcher runs
// on the VM's channel.
func (o *Options) canFetchSecrets() error {
	const what = "the config fetches secrets by kbs:/// reference ([secrets.kbs])"
	switch {
	case o.Attest == "":
		return fmt.Errorf("%s: the runtime options name no attestation service (attest) to fetch them from", what)
	case o.Backend == tee.NameNil:
		return fmt.Errorf("%s: backend nil has no evidence, and the service releases secrets only to keeps in a TEE (runtime option backend)", what)
	}
	_, err := o.attestCA()
	return err
}
