// Package host is the host agent (`castellan host serve`): the keep
// manager on a TEE host. The agent is untrusted by design: it starts keeps
// as child processes with OS-enforced limits, records them in SQLite so
// that a restarted agent knows every keep it ran, and relays opaque bytes
// between a client and a keep; the workload and its secrets travel inside
// TLS that ends in the keep (package delivery), so the agent never holds
// their plaintext.
//
// API (HTTPS, bearer tokens, JSON; see docs/host-api.yaml):
//
//	GET  /v1/host                      host info: backends, maxima, enforcement
//	POST /v1/keeps                     create a keep → 201 Keep (with its hello)
//	GET  /v1/keeps                     list
//	GET  /v1/keeps/{id}                inspect
//	POST /v1/keeps/{id}/stop           stop (kills the keep's process group)
//	GET  /v1/keeps/{id}/events         events as JSON lines; ?follow=1 streams
//	POST /v1/keeps/{id}/attach         Upgrade: castellan-relay → raw bytes to the keep
package host

import (
	"encoding/json"
	"errors"
	"time"

	"github.com/castellan-dev/castellan/internal/keep"
)

// Keep states.
const (
	StateStarting = "starting" // process started, evidence not yet made
	StateReady    = "ready"    // evidence published, waiting for the client
	StateRunning  = "running"  // package delivered and checked, workload running
	StateExited   = "exited"   // the workload ended; ExitCode is its status
	StateFailed   = "failed"   // the keep ended without a workload exit; Reason says why
	StateStopped  = "stopped"  // stopped through the API
)

// Terminal reports whether state is final.
func Terminal(state string) bool {
	return state == StateExited || state == StateFailed || state == StateStopped
}

// Limits of one keep (internal/keep): the OS enforces them on a process
// keep; a VM keep is sized by them and ended at its wall time. Zero means
// the host's maximum, or for a VM's size the default.
type Limits = keep.Limits

// CreateRequest is the body of POST /v1/keeps.
type CreateRequest struct {
	Backend string `json:"backend"`
	// Nonce is the client's (or the attestation service's) challenge,
	// bound into the keep's evidence.
	Nonce []byte `json:"nonce"`
	// Digest is the package digest the client will deliver; the keep
	// attests to it and refuses any other package.
	Digest string `json:"digest"`
	// ClientKey is the SHA-256 of the public key (SPKI) that the client
	// will present in TLS to the keep.
	ClientKey []byte `json:"client_key"`
	Limits    Limits `json:"limits"`
	Name      string `json:"name,omitempty"`
}

// Keep is a keep as the agent knows it.
type Keep struct {
	ID       string     `json:"id"`
	Name     string     `json:"name,omitempty"`
	Backend  string     `json:"backend"`
	Platform string     `json:"platform"`
	Digest   string     `json:"digest"` // the package the keep attested to (not yet proof that it runs it)
	State    string     `json:"state"`
	Limits   Limits     `json:"limits"`
	PID      int        `json:"pid,omitempty"`
	Created  time.Time  `json:"created"`
	Ended    *time.Time `json:"ended,omitempty"`
	ExitCode *int       `json:"exit_code,omitempty"`
	Signal   string     `json:"signal,omitempty"`
	Reason   string     `json:"reason,omitempty"`
	Attached bool       `json:"attached"`
	// Hello is the keep's evidence and CSR (JSON of delivery.Hello).
	Hello json.RawMessage `json:"hello,omitempty"`
	// Enforcement says how the limits are enforced for this keep.
	Enforcement []string `json:"enforcement,omitempty"`
}

// Event is one entry of a keep's event log.
type Event struct {
	Seq     int64     `json:"seq"`
	Keep    string    `json:"keep"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"` // created, ready, attached, detached, running, log, ended, adopted
	Message string    `json:"message"`
}

// HostInfo is the answer to GET /v1/host.
type HostInfo struct {
	Backends    map[string]string `json:"backends"` // name → "available" or why not
	Max         Limits            `json:"max"`
	MaxKeeps    int               `json:"max_keeps"`
	LiveKeeps   int               `json:"live_keeps"`
	Enforcement []string          `json:"enforcement"`
}

// ErrorResponse is the body of every 4xx and 5xx answer.
type ErrorResponse struct {
	Error string `json:"error"`
}

var errNotFound = errors.New("no such keep")
