// Package keep launches keeps. A keep is one TEE instance that receives one
// workload: a process (the castellan runtime in a child process with OS
// limits, for development and inside a confidential VM) or a VM (a micro-VM
// per keep booted by QEMU from a measured keep image; package
// internal/keep/qemu). The kind of keep and its evidence backend are two
// independent choices: either kind runs with any backend.
//
// Every kind follows one lifecycle, after caddy's modules: a Launcher is
// constructed from its configuration and provisioned once (Provision checks
// what it needs on this host and says how limits are enforced), then it
// starts keeps; each started keep is an Instance that the caller waits on,
// reads the hello and the log of, stops by its process group and cleans
// up. The host agent, `castellan run --keep vm` and a containerd shim use
// the same interface; none of them builds a keep's command line itself.
//
// Whatever the kind, a started keep looks the same from outside: one host
// process leads a process group that holds everything the keep started
// (the keep process, or QEMU), its folder holds the Unix socket of its
// delivery endpoint (SocketFile, one connection: the agent relays the
// client's TLS session there), its output file (internal/keeplog: its log
// lines, appended by the keep process or by the VM launcher) and, once it
// ended, its own account of how (ExitFile). The host never holds a key of
// the keep.
package keep

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
)

// Kinds of keep.
const (
	KindProcess = "process"
	KindVM      = "vm"
)

// Kinds lists the kinds of keep, the default first.
func Kinds() []string { return []string{KindProcess, KindVM} }

// Files in a keep's folder.
const (
	SocketFile = "keep.sock" // the keep's delivery endpoint, one connection
	ExitFile   = "exit.json" // the keep's own account of how it ended
	// StateLine starts a log line that reports a state change (the rest
	// is the new state); it is not a log message.
	StateLine  = "@state "
	MaxLogLine = 4096 // longer log lines are cut
	// MaxDirLen bounds a keep folder's path so that the socket paths in
	// it fit a Unix socket address (sun_path, 108 bytes).
	MaxDirLen = 100 - len(SocketFile) - 1
)

// Limits of one keep. Zero means the host's maximum (the host agent) or
// the default (VM size). JSON is the host agent's API.
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"` // private writable memory of a process keep (RLIMIT_DATA; memory.max with cgroups)
	CPUSeconds  int64 `json:"cpu_seconds,omitempty"`  // CPU time (RLIMIT_CPU)
	WallSeconds int64 `json:"wall_seconds,omitempty"` // wall time, from creation; the keep is killed
	OpenFiles   int64 `json:"open_files,omitempty"`   // descriptors (RLIMIT_NOFILE)
	// The size of a VM keep: its RAM and its vCPUs (process keeps ignore
	// them). Zero: DefaultVMMemory and DefaultVCPUs.
	VMMemoryBytes int64 `json:"vm_memory_bytes,omitempty"`
	VCPUs         int64 `json:"vcpus,omitempty"`
	// CPUQuotaMicros of CPU time per CPUPeriodMicros cap a process keep's
	// CPU rate (its cgroup's cpu.max; a pod's CPU limit); 0: no cap, and
	// none without a cgroup. A VM keep's rate is its vCPUs.
	CPUQuotaMicros  int64 `json:"cpu_quota_us,omitempty"`
	CPUPeriodMicros int64 `json:"cpu_period_us,omitempty"`
}

// Default size of a VM keep (the workload config's, internal/config): RAM
// is reserved for the VM's whole life, so the default is what a keep
// needs, not the host's maximum.
const (
	DefaultVMMemory = config.DefaultVMMemory
	DefaultVCPUs    = config.DefaultVCPUs
	MinVMMemory     = config.MinVMMemory
)

// Spec is one keep to start.
type Spec struct {
	ID  string // the keep's id, for names and logs
	Dir string // its folder, created by the caller, at most MaxDirLen bytes
	// Backend is the evidence backend (nil, sim-snp, sim-tdx, snp, tdx).
	Backend string
	// Nonce, Digest and ClientKey are bound into the keep's evidence: the
	// client's challenge, the package it will deliver, the SHA-256 of the
	// public key it will present.
	Nonce     []byte
	Digest    string
	ClientKey []byte
	Limits    Limits
	// Volumes are host folders a keep preopens for its workload (the
	// containerd shim's pod volumes): a process keep opens them itself, a
	// VM keep's guest mounts them through virtio-fs.
	Volumes []Volume
	// SecretServiceURL and SecretServiceCA (a PEM file; empty: the
	// system's roots) are where the keep fetches its config's
	// [secrets.kbs] after it attested (the containerd shim's attestation
	// service): a process keep over the network, a VM keep over
	// connections its launcher relays to that URL's host:port. Empty: it
	// fetches none, and refuses a config that does.
	SecretServiceURL string
	SecretServiceCA  string
	// AttachTimeout is how long the ready keep waits for its client.
	AttachTimeout time.Duration
	// MaxOutput bounds the keep's output file (0: the keep's default).
	MaxOutput int64
}

// Launcher starts keeps of one kind.
type Launcher interface {
	// Kind is KindProcess or KindVM.
	Kind() string
	// Provision checks once, before the first Start, that keeps of this
	// kind can start here; the error names what is missing.
	Provision() error
	// Enforcement says how limits are enforced, one line each (after
	// Provision).
	Enforcement() []string
	// Available says whether keeps of the evidence backend can start here,
	// and why not (after Provision): a process keep needs the backend on
	// this machine, a VM keep of backend snp or tdx needs a host that
	// launches such VMs.
	Available(backend string) error
	// Start starts a keep. It returns once the keep's host process runs;
	// the keep then makes its key and evidence (Instance.Hello).
	Start(ctx context.Context, s Spec) (Instance, error)
	// Cleanup removes what a keep this kind started left on the host
	// (sockets, temporary files, its cgroup) once the keep ended, whether
	// this launcher or one of an earlier agent started it.
	Cleanup(id, dir string)
}

// Instance is a started keep.
type Instance interface {
	// PID is the host process that leads the keep's process group (the
	// keep process, or QEMU); with StartTicks it survives pid reuse. To
	// stop a keep, kill its group (KillGroup).
	PID() int
	StartTicks() uint64
	// What names the keep's host process in reasons ("the keep process",
	// "the keep VM").
	What() string
	// Hello waits for the keep's hello (JSON of delivery.Hello: evidence
	// and CSR) until ctx ends. Called once.
	Hello(ctx context.Context) ([]byte, error)
	// Wait waits for the keep's host process to end and returns its
	// state; by then the keep wrote ExitFile if it could.
	Wait() *os.ProcessState
}

// ExitRecord is a keep's own account of how it ended (ExitFile): written
// by the keep process, or by the VM launcher from the exit status the
// guest sent over its channel.
type ExitRecord struct {
	State    string `json:"state"` // "exited" or "failed"
	ExitCode *int   `json:"exit_code,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// Exit record states.
const (
	Exited = "exited"
	Failed = "failed"
)

// WriteExitRecord writes r to dir atomically.
func WriteExitRecord(dir string, r ExitRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ExitFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, ExitFile))
}

// IsCrashLine reports whether a line of a keep's log starts a Go runtime's
// crash report: the keep process died without its own exit record, and
// this line says why.
func IsCrashLine(line string) bool {
	return strings.HasPrefix(line, "fatal error: ") || strings.HasPrefix(line, "panic: ")
}

// MemoryLimitReason is how a keep that crashed with crash (its log's crash
// line) ended when that crash is its runtime running out of memory under
// a memory limit; ok is false for any other crash.
func MemoryLimitReason(crash string, limit int64) (reason string, ok bool) {
	if limit <= 0 || !strings.Contains(crash, "out of memory") {
		return "", false
	}
	return fmt.Sprintf("memory limit of %d bytes reached (%s)", limit, crash), true
}

// ReadExitRecord reads the exit record in dir; nil when there is none or
// it does not make sense.
func ReadExitRecord(dir string) *ExitRecord {
	b, err := os.ReadFile(filepath.Join(dir, ExitFile))
	if err != nil || len(b) > 64<<10 {
		return nil
	}
	var r ExitRecord
	if json.Unmarshal(b, &r) != nil || (r.State != Exited && r.State != Failed) {
		return nil
	}
	if r.State == Exited && r.ExitCode == nil {
		return nil
	}
	return &r
}

// CheckDir refuses a keep folder whose socket paths would not fit a Unix
// socket address.
func CheckDir(dir string) error {
	if len(dir) > MaxDirLen {
		return fmt.Errorf("keep folder %s: path too long for the keep's Unix sockets (at most %d bytes)", dir, MaxDirLen)
	}
	return nil
}

// ErrNotReady is wrapped by Hello when the keep ended before its hello.
var ErrNotReady = errors.New("the keep ended before it was ready")
