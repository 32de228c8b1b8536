// Package testvectors gives tests the vectors Castellan does not commit:
// files taken from public repositories (other projects' test fixtures and
// binaries), which may only live outside the developers' trees. A test asks
// for a vector by name; it gets the file's bytes, checked against the
// sha256 recorded here, or is skipped with a line naming the file, where it
// comes from and where to put it.
//
// A vector is looked up as $CASTELLAN_VECTORS/<name>, then as
// <module root>/../shared/vectors/<name> (the steering repository's shared
// folder beside a worktree). README.md lists every vector with its source.
//
// Test data shipped inside Go modules is read from the Go module cache
// instead (ModuleFile): a registry package, never copied into the tree.
package testvectors

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// Vector is one outside file a test may use.
type Vector struct {
	Name   string // file name under the vectors folder
	SHA256 string // of the file as it must be placed
	Source string // where it comes from: repository, commit, path, licence
}

// Known lists every outside vector (README.md says the same).
var Known = []Vector{
	{
		Name:   "ovmf_AmdSev_suffix.bin",
		SHA256: "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c",
		Source: "virtee/sev-snp-measure@8f2b337e38bc83f87cd30f3253cdfe8e3e12cc3a tests/fixtures/ovmf_AmdSev_suffix.bin (Apache-2.0): the last 4 KiB of edk2-stable202405's OvmfPkg/AmdSev build",
	},
	{
		Name:   "ovmf_OvmfX64_suffix.bin",
		SHA256: "b4c021e085fb83ceffe6571a3d357b4a98773c83c474e47f76c876708fe316da",
		Source: "virtee/sev-snp-measure@8f2b337e38bc83f87cd30f3253cdfe8e3e12cc3a tests/fixtures/ovmf_OvmfX64_suffix.bin (Apache-2.0): the last 4 KiB of edk2-stable202405's OvmfPkg/OvmfPkgX64 build",
	},
	{
		Name:   "td-payload.efi",
		SHA256: "9e416bb522dd060b2c63fa3eef9f28537ac8b73ea64dc93773d328b0e771522c",
		Source: "confidential-containers/td-shim@125eeab58f69b891175c8803b4a824bfed7389c1 data/blobs/td-payload.efi (BSD-2-Clause-Patent): a PE/COFF EFI image",
	},
	{
		Name:   "amd_milan_crl.der",
		SHA256: "53a61dc059e525ef637c4f28b7ab2542f64ef1ad0a485eca425bafe722e15f58",
		Source: "AMD KDS https://kdsintf.amd.com/vcek/v1/Milan/crl, CRL number 6 (this update 2025-05-06, next update 2026-05-12), DER; or the second X509 CRL of openpcc/openpcc@b357e152c7bf5e212d18e94de6974ca67642e16d attestation/attest/testdata/sev_certificates.txt (Apache-2.0) turned into DER with openssl crl -outform DER",
	},
	{
		Name:   "sgx_quote_v3_dcapqvl.dat",
		SHA256: "f8b81014b6e443609746822194910f5dc1c92c322fa0584298d1e33e505ca3b5",
		Source: "Phala-Network/dcap-qvl@9bffe30b4da53acc05f2e3a36fafc0f6418973b8 sample/sgx_quote (MIT): an SGX DCAP v3 quote from a real machine, FMSPC 00A067110000",
	},
	{
		Name:   "sgx_collateral_00A067110000.json",
		SHA256: "bdd694bbe50f3a2a1cfe12f9e2bd83125921107a368edcf10780a5523b8501ce",
		Source: "Phala-Network/dcap-qvl@9bffe30b4da53acc05f2e3a36fafc0f6418973b8 sample/sgx_quote_collateral.json (MIT): Intel's collateral for that quote's FMSPC, issued 2025-06-19",
	},
	{
		Name:   "sgx_quote_v3_occlum.dat",
		SHA256: "77bcbdfa9c1abb98fd19d60f815b049d187e4e7495203a2e13aeac91fb9f9772",
		Source: "confidential-containers/trustee@78962cd416dcc8a32f9377e0066a28fe21420f69 deps/verifier/test_data/occlum_quote.dat (Apache-2.0): an SGX DCAP v3 quote from an Occlum enclave",
	},
	{
		Name:   "snp_evidence_guest_components_genoa.json",
		SHA256: "3c7d1e6a3575beb6b7632e2a08123d45de9c9128a357a0bd3f97630ef4b1ac3d",
		Source: "confidential-containers/trustee@78962cd416dcc8a32f9377e0066a28fe21420f69 attestation-service/tests/e2e/evidence.json (Apache-2.0): SEV-SNP evidence as guest-components' snp attester sends it (the sev crate's JSON), a version 3 report from a Genoa machine with its VCEK",
	},
}

// EnvVar names the folder looked in first.
const EnvVar = "CASTELLAN_VECTORS"

// Lookup returns the known vector called name.
func Lookup(name string) (Vector, bool) {
	for _, v := range Known {
		if v.Name == name {
			return v, true
		}
	}
	return Vector{}, false
}

// Dirs returns the folders a vector is looked up in, in order.
func Dirs() []string {
	var dirs []string
	if d := os.Getenv(EnvVar); d != "" {
		dirs = append(dirs, d)
	}
	if root, err := moduleRoot(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(root), "shared", "vectors"))
	}
	return dirs
}

// moduleRoot is the nearest folder at or above the working directory (a
// test's package folder) that holds go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// find returns the bytes of vector v and where they were read, or
// fs.ErrNotExist when no folder has it. A file whose sha256 differs from
// v.SHA256 is an error: a wrong file must not pass or skip silently.
func find(v Vector, dirs []string) ([]byte, string, error) {
	for _, d := range dirs {
		p := filepath.Join(d, v.Name)
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, p, err
		}
		if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != v.SHA256 {
			return nil, p, fmt.Errorf("%s has sha256 %x, want %s (%s)", p, s, v.SHA256, v.Source)
		}
		return b, p, nil
	}
	return nil, "", fs.ErrNotExist
}

// Read returns the bytes of the known vector name, or skips t when no
// folder has it. It fails t for an unknown name or a file with the wrong
// sha256.
func Read(t testing.TB, name string) []byte {
	t.Helper()
	return get(t, name, false)
}

// Optional is Read for fuzz seeds, which must not skip their target: it
// returns nil where Read would skip.
func Optional(t testing.TB, name string) []byte {
	t.Helper()
	return get(t, name, true)
}

func get(t testing.TB, name string, optional bool) []byte {
	t.Helper()
	v, ok := Lookup(name)
	if !ok {
		t.Fatalf("testvectors: %q is not a known vector", name)
	}
	b, _, err := find(v, Dirs())
	if errors.Is(err, fs.ErrNotExist) {
		if optional {
			return nil
		}
		t.Skipf("outside test vector %s not found in %v (or $%s); its source: %s", name, Dirs(), EnvVar, v.Source)
	}
	if err != nil {
		t.Fatalf("testvectors: %v", err)
	}
	return b
}
