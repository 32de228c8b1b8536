package vmproto

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"slices"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/strictjson"
	"github.com/castellan-dev/castellan/internal/tee"
)

// LaunchRequest is what the host tells one VM keep: exactly the
// parameters the agent gives a process keep, plus, for the simulated
// backends only, the simulation CA that signs the keep's evidence. None of
// it is on the (measured, per-image) kernel command line.
type LaunchRequest struct {
	Backend   string `json:"backend"`    // a tee backend name (not "auto")
	Nonce     []byte `json:"nonce"`      // bound into the evidence, 1 to evidence.MaxNonceSize bytes
	Digest    string `json:"digest"`     // the package digest the keep attests to
	ClientKey []byte `json:"client_key"` // SHA-256 of the client's SPKI
	Limits    Limits `json:"limits"`
	// AttachTimeoutMillis is how long the keep waits for its client.
	AttachTimeoutMillis int64 `json:"attach_timeout_ms"`
	// SimCA is the simulation CA (sim.CA.MarshalPEM: keys and
	// certificates) for sim-snp and sim-tdx; refused for other backends.
	// A simulation proves nothing, so its keys may cross the untrusted
	// channel (see RATIONALE.md).
	SimCA []byte `json:"sim_ca,omitempty"`
	// SimMeasurement is the launch measurement a sim-snp report claims
	// (48 bytes, e.g. the image's expected SEV-SNP measurement); empty =
	// SHA-384 of the guest's castellan binary.
	SimMeasurement []byte `json:"sim_measurement,omitempty"`
	// SecretServiceURL is where the keep fetches its config's
	// [secrets.kbs] (https://host[:port], as delivery.SecretService), over
	// connections the host relays to that host:port; empty: it fetches
	// none. SecretServiceRoots are the service's TLS roots (PEM; empty:
	// the system's). TLS runs in the keep, so the host relays ciphertext.
	SecretServiceURL   string `json:"secret_service_url,omitempty"`
	SecretServiceRoots []byte `json:"secret_service_roots,omitempty"`
	// Volumes are the keep's volumes, each a virtio-fs device of the VM
	// (at most keep.MaxVolumes). The guest mounts each under its own
	// folder (VolumeMountDir) and preopens it for the workload, as a
	// process keep preopens the host's folder.
	Volumes []Volume `json:"volumes,omitempty"`
}

// Volume is one of the keep's volumes as the guest sees it: a virtio-fs
// tag, the path the workload sees and whether it is read-only. It never
// holds a host path: the guest needs none, and the host's layout is none
// of its business.
type Volume struct {
	Tag      string `json:"tag"`
	Guest    string `json:"guest"`
	ReadOnly bool   `json:"readonly,omitempty"`
}

// MaxVolumeTag is the longest virtio-fs tag (the device's config field
// holds 36 bytes).
const MaxVolumeTag = 36

// VolumeMountDir is the guest's folder under which the guest mounts each
// volume, at its tag.
const VolumeMountDir = "/volumes"

// ValidVolumeTag reports whether tag is a virtio-fs tag a launch request
// may carry: 1 to MaxVolumeTag ASCII letters, digits or dashes (it names
// a folder in the guest and an option of QEMU's, so nothing else).
func ValidVolumeTag(tag string) bool {
	if tag == "" || len(tag) > MaxVolumeTag {
		return false
	}
	for _, c := range tag {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkVolumes checks the volumes: valid tags, each once, and guest paths
// as keep.CheckVolumes wants them (absolute, clean, each once, not /).
func (r *LaunchRequest) checkVolumes() error {
	if len(r.Volumes) > keep.MaxVolumes {
		return fmt.Errorf("launch request: %d volumes, more than %d", len(r.Volumes), keep.MaxVolumes)
	}
	tags := map[string]bool{}
	var vs []keep.Volume
	for _, v := range r.Volumes {
		if !ValidVolumeTag(v.Tag) {
			return fmt.Errorf("launch request: volume tag %q, want 1 to %d letters, digits or dashes", v.Tag, MaxVolumeTag)
		}
		if tags[v.Tag] {
			return fmt.Errorf("launch request: volume tag %q given twice", v.Tag)
		}
		tags[v.Tag] = true
		vs = append(vs, keep.Volume{Guest: v.Guest, Host: path.Join(VolumeMountDir, v.Tag), ReadOnly: v.ReadOnly})
	}
	if err := keep.CheckVolumes(vs); err != nil {
		return fmt.Errorf("launch request: %w", err)
	}
	return nil
}

// Limits are the keep's limits, as the agent's host.Limits (the VM's
// memory and vCPUs are set by the launcher; the guest applies these to
// itself as a process keep does).
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	CPUSeconds  int64 `json:"cpu_seconds,omitempty"`
	WallSeconds int64 `json:"wall_seconds,omitempty"`
	OpenFiles   int64 `json:"open_files,omitempty"`
}

// MaxAttachTimeout bounds the attach timeout a launch request may ask for.
const MaxAttachTimeout = 24 * time.Hour

// AttachTimeout returns the attach timeout as a duration.
func (r *LaunchRequest) AttachTimeout() time.Duration {
	return time.Duration(r.AttachTimeoutMillis) * time.Millisecond
}

// Check validates every field.
func (r *LaunchRequest) Check() error {
	if r.Backend == tee.NameAuto || !slices.Contains(tee.Names(), r.Backend) {
		return fmt.Errorf("launch request: backend %q, want one of %v", r.Backend, tee.Names())
	}
	if len(r.Nonce) == 0 || len(r.Nonce) > evidence.MaxNonceSize {
		return fmt.Errorf("launch request: nonce of %d bytes, want 1 to %d", len(r.Nonce), evidence.MaxNonceSize)
	}
	if err := evidence.CheckDigest(r.Digest); err != nil {
		return fmt.Errorf("launch request: %w", err)
	}
	if len(r.ClientKey) != sha256.Size {
		return fmt.Errorf("launch request: client_key of %d bytes, want %d", len(r.ClientKey), sha256.Size)
	}
	l := r.Limits
	if l.MemoryBytes < 0 || l.CPUSeconds < 0 || l.WallSeconds < 0 || l.OpenFiles < 0 {
		return errors.New("launch request: a negative limit")
	}
	if r.AttachTimeoutMillis <= 0 || r.AttachTimeoutMillis > MaxAttachTimeout.Milliseconds() {
		return fmt.Errorf("launch request: attach timeout of %d ms, want 1 ms to %v", r.AttachTimeoutMillis, MaxAttachTimeout)
	}
	sim := r.Backend == tee.NameSimSNP || r.Backend == tee.NameSimTDX
	if !sim && (len(r.SimCA) > 0 || len(r.SimMeasurement) > 0) {
		return fmt.Errorf("launch request: simulation material for backend %s", r.Backend)
	}
	if sim && len(r.SimCA) == 0 {
		return fmt.Errorf("launch request: backend %s without its simulation CA", r.Backend)
	}
	if len(r.SimMeasurement) != 0 && (r.Backend != tee.NameSimSNP || len(r.SimMeasurement) != 48) {
		return fmt.Errorf("launch request: sim_measurement of %d bytes, want 48 and backend sim-snp", len(r.SimMeasurement))
	}
	if err := r.checkVolumes(); err != nil {
		return err
	}
	return r.checkSecretService()
}

// checkSecretService checks the secret service fields as the keep checks
// a process keep's --secret-service.
func (r *LaunchRequest) checkSecretService() error {
	if r.SecretServiceURL == "" {
		if len(r.SecretServiceRoots) > 0 {
			return errors.New("launch request: secret_service_roots without secret_service_url")
		}
		return nil
	}
	if err := r.SecretService().Check(); err != nil {
		return fmt.Errorf("launch request: %w", err)
	}
	return nil
}

// SecretService returns the secret service the request names, nil for
// none (its Dial is left to the guest).
func (r *LaunchRequest) SecretService() *delivery.SecretService {
	if r.SecretServiceURL == "" {
		return nil
	}
	return &delivery.SecretService{URL: r.SecretServiceURL, RootsPEM: r.SecretServiceRoots}
}

// serviceAddr is the host:port the host's relay dials: the secret
// service URL's (port 443 by default); "" for none.
func (r *LaunchRequest) serviceAddr() string {
	if r.SecretServiceURL == "" {
		return ""
	}
	u, err := url.Parse(r.SecretServiceURL)
	if err != nil {
		return ""
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// ParseLaunchRequest decodes and checks a launch frame: one JSON object,
// no unknown fields, every field valid.
func ParseLaunchRequest(b []byte) (*LaunchRequest, error) {
	var r LaunchRequest
	if err := strictjson.Decode(b, &r); err != nil {
		return nil, fmt.Errorf("launch request: %w", err)
	}
	if err := r.Check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Exit is the guest's last frame: how the keep ended.
type Exit struct {
	State    string `json:"state"` // "exited" (ExitCode is the workload's) or "failed"
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// Exit states.
const (
	StateExited = "exited"
	StateFailed = "failed"
)

// ParseExit decodes and checks an exit frame.
func ParseExit(b []byte) (*Exit, error) {
	var x Exit
	if err := strictjson.Decode(b, &x); err != nil {
		return nil, fmt.Errorf("exit status: %w", err)
	}
	switch {
	case x.State == StateExited && x.ExitCode == nil:
		return nil, errors.New("exit status: exited without an exit code")
	case x.State == StateFailed && x.ExitCode != nil:
		return nil, errors.New("exit status: failed with an exit code")
	case x.State != StateExited && x.State != StateFailed:
		return nil, fmt.Errorf("exit status: state %q, want exited or failed", x.State)
	}
	return &x, nil
}
