// Package config reads a workload's config: a TOML file compatible with
// Enarx's Enarx.toml (args, env, steward, [[files]]), extended with
// directories (kind = "dir"), a [limits] table, secrets (a [secrets]
// table of environment names and kind = "secret" descriptors, whose
// values the deployer supplies and the config never holds) and what a
// detached keep does with its output (detached_output), and how many
// instances of the workload the keep runs (replicas).
//
// The config decides the workload's WASI descriptor table: the i-th
// [[files]] entry is descriptor i. It is untrusted input when it comes from
// a package, so every parse error names the line and the key.
package config

import (
	goruntime "runtime"
	"time"
)

// Kind is the kind of a [[files]] entry.
type Kind string

// The kinds of descriptor a config can name.
const (
	KindNull    Kind = "null"
	KindStdin   Kind = "stdin"
	KindStdout  Kind = "stdout"
	KindStderr  Kind = "stderr"
	KindListen  Kind = "listen"
	KindConnect Kind = "connect"
	KindDir     Kind = "dir"
	// KindSecret is a read-only file held in the keep's memory whose
	// contents the deployer supplies (the secret named like the entry).
	KindSecret Kind = "secret"
)

// What a detached keep does with its workload's output.
const (
	DetachedDiscard = "discard" // the default: nobody sees it
	DetachedHost    = "host"    // the host agent's log, which the host can read
)

// Protocols of listen and connect entries.
const (
	ProtTCP = "tcp"
	ProtTLS = "tls"
)

// Config is a parsed workload config.
type Config struct {
	// Steward is the https URL of the attestation service, if any.
	Steward string
	// StewardCA pins the secret service's TLS roots ("sha256:<hex>" of a
	// CA certificate's DER, steward_ca): a keep that fetches [secrets.kbs]
	// trusts that certificate alone among the roots its host gives it,
	// whatever the service's URL. "" = no pin: the host's roots.
	StewardCA string
	// Args follow argv[0] ("main.wasm").
	Args []string
	// Env holds the [env] table. The runtime adds FD_COUNT and FD_NAMES first,
	// then these entries sorted by key.
	Env map[string]string
	// Files is the descriptor table in order: Files[i] is descriptor i.
	Files []File
	// Limits bounds the keep; zero fields mean "no limit given".
	Limits Limits
	// Replicas is how many instances of the workload the keep runs at once
	// (0: one; ReplicasAuto: one per core). See Instances.
	Replicas int
	// SecretEnv names the environment variables whose values are secrets
	// the deployer supplies ([secrets] env), in the file's order.
	SecretEnv []string
	// SecretRefs maps declared secret names to the kbs:///repo/type/tag
	// references ([secrets.kbs]) the keep fetches after attestation.
	SecretRefs map[string]string
	// DetachedOutput is DetachedDiscard or DetachedHost: where the output of
	// a workload goes once its client detached.
	DetachedOutput string
	// Warnings are non-fatal remarks in the errors' one-line form
	// ("Enarx.toml:7: host in listen entry ... is read as addr"), to be
	// printed by the caller.
	Warnings []string
}

// File is one [[files]] entry, with defaults applied.
type File struct {
	Kind Kind
	// Name is the descriptor's name in FD_NAMES; for dir it is the
	// preopened guest path the workload sees (for example "/data").
	Name string
	// Prot is ProtTCP or ProtTLS for listen and connect.
	Prot string
	// Addr is the listen address (default "::").
	Addr string
	// Host is the connect host name or address.
	Host string
	// Port is the listen or connect port (default 80 for tcp, 443 for tls).
	Port uint16
	// CAFile is a PEM file of roots a TLS connect trusts instead of the
	// system roots; relative paths are resolved against the config's folder.
	CAFile string
	// Path is the host directory of a dir entry; relative paths are resolved
	// against the config's folder.
	Path string
	// ReadOnly forbids writes below a dir entry.
	ReadOnly bool
	// Secret is the contents of a secret entry, set by BindSecrets from the
	// values the deployer supplied (never parsed from the config, never
	// serialised).
	Secret []byte `json:"-"`
	// Line is where the entry starts in the file, for messages.
	Line int
}

// Limits bounds what a keep may use.
type Limits struct {
	// MemoryPages caps linear memory, in 64 KiB pages (0: engine default).
	MemoryPages uint32
	// WallTime stops the keep after this long (0: none).
	WallTime time.Duration
	// MaxOutput caps the bytes written to stdout and stderr together (0: none).
	MaxOutput int64
	// MaxOpenFiles caps the descriptors open at once (0: default 1024).
	MaxOpenFiles int
	// VMMemory and VCPUs size the VM of a VM keep (--keep vm): its RAM in
	// bytes, a whole number of MiB (0: DefaultVMMemory), and its vCPUs
	// (0: DefaultVCPUs). A process keep ignores them.
	VMMemory int64
	VCPUs    int
}

// Default size of a VM keep's VM.
const (
	DefaultVMMemory = 512 << 20
	DefaultVCPUs    = 1
	MinVMMemory     = 128 << 20
	MaxVMMemory     = 1 << 40
	MaxVCPUs        = 255
)

// ReplicasAuto is the Replicas value of `replicas = "auto"`.
const ReplicasAuto = -1

// MaxReplicas bounds `replicas`.
const MaxReplicas = 256

// Instances is the number of instances to run: Replicas, or the number of
// CPUs the process may use for ReplicasAuto, at least 1.
func (c *Config) Instances() int {
	switch {
	case c.Replicas == ReplicasAuto:
		return min(goruntime.GOMAXPROCS(0), MaxReplicas)
	case c.Replicas > 0:
		return c.Replicas
	}
	return 1
}

// Default is the config of a workload run without one: stdin, stdout and
// stderr, no limits.
func Default() *Config {
	return &Config{DetachedOutput: DetachedDiscard, Files: []File{
		{Kind: KindStdin, Name: "stdin"},
		{Kind: KindStdout, Name: "stdout"},
		{Kind: KindStderr, Name: "stderr"},
	}}
}
