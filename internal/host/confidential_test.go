package host

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/policy"
	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/tee"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// ownerPolicy writes a policy and measurement database that trust the
// simulation roots of this run, the measurement of this executable (the
// keep processes are this test binary) and the given workloads.
func ownerPolicy(t testing.TB, digests ...string) (policyFile, measFile string, snap *policy.Snapshot) {
	t.Helper()
	_, rootsPath, err := tee.SimRoots()
	if err != nil {
		t.Fatal(err)
	}
	m, err := sim.Measurement()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	policyFile = filepath.Join(dir, "policy.toml")
	measFile = filepath.Join(dir, "measurements.toml")
	ws := make([]string, len(digests))
	for i, d := range digests {
		ws[i] = fmt.Sprintf("%q", d)
	}
	p := fmt.Sprintf(`allow_insecure = false
workloads = [%s]
[platforms.snp]
sim_roots = [%q]
[platforms.snp.min_tcb]
bootloader = 3
snp = 20
`, strings.Join(ws, ", "), rootsPath)
	meas := fmt.Sprintf("[[measurement]]\nplatform = \"snp\"\nvalue = %q\nname = \"castellan test binary\"\n", hex.EncodeToString(m))
	if err := os.WriteFile(policyFile, []byte(p), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(measFile, []byte(meas), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err = policy.Load(policyFile, measFile)
	if err != nil {
		t.Fatal(err)
	}
	return policyFile, measFile, snap
}

// TestNoPlaintext deploys, on sim-snp with the owner's policy, a workload
// whose config carries one marker and declares a secret environment value
// that carries another, and a second workload that reads a secret file
// (declared in its config, kind = "secret") carrying a third. It then
// searches everything the agent holds for all three: its database, its
// log, the events it serves, every file in its state folder (keep folders
// and their temporary files included) and every buffer its relay moved.
func TestNoPlaintext(t *testing.T) {
	const workloadMarker = "MARKER-IN-THE-WORKLOAD-7c1e9a"
	const secretMarker = "MARKER-IN-THE-SECRET-3f8b2d"
	const fileMarker = "MARKER-IN-THE-SECRET-FILE-5D0A7C" // upper case: the stdin fixture upper-cases what it reads
	h := newHarness(t)
	cfg := []byte(fmt.Sprintf("args = [%q]\n[secrets]\nenv = [\"API_KEY\"]\n%s", workloadMarker, stdio))
	art := artifact(t, fixtures.Go(t, "hello"), cfg)
	fileCfg := []byte("[[files]]\nkind = \"secret\"\nname = \"api.key\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n")
	fileArt := artifact(t, fixtures.Go(t, "stdin"), fileCfg)
	_, _, snap := ownerPolicy(t, art.Digest.String(), fileArt.Digest.String())
	v := &delivery.PolicyVerifier{Policy: snap, Name: "test policy"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k, res, out, errOut, err := h.deploy(ctx, "sim-snp", art, v, func(o *DeployOptions) {
		o.Delivery.Secrets = map[string]string{"API_KEY": secretMarker}
	})
	if err != nil {
		t.Fatalf("deploy: %v (stderr %q)", err, errOut)
	}
	// The workload saw both: the deployment worked.
	if res.ExitCode != 0 || !strings.Contains(out, "arg[1]="+workloadMarker) || !strings.Contains(out, "env API_KEY="+secretMarker) {
		t.Fatalf("result %+v, stdout %q, stderr %q", res, out, errOut)
	}
	fk, res, out, errOut, err := h.deploy(ctx, "sim-snp", fileArt, v, func(o *DeployOptions) {
		o.Delivery.Secrets = map[string]string{"api.key": fileMarker + "\n"}
	})
	if err != nil {
		t.Fatalf("deploy with a secret file: %v (stderr %q)", err, errOut)
	}
	if res.ExitCode != 0 || out != fileMarker+"\nbytes: 33\n" {
		t.Fatalf("secret file: result %+v, stdout %q, stderr %q", res, out, errOut)
	}
	h.waitEnded(k.ID)
	h.waitEnded(fk.ID)

	places := h.places(ctx, k.ID, fk.ID)
	if len(places["relay"]) < len(art.Wasm)+len(fileArt.Wasm) {
		t.Fatalf("the relay tap saw %d bytes, less than the modules: the test would prove nothing", len(places["relay"]))
	}
	for where, b := range places {
		for _, m := range []string{workloadMarker, secretMarker, fileMarker} {
			if bytes.Contains(b, []byte(m)) {
				t.Errorf("%s holds the plaintext marker %s", where, m)
			}
		}
	}
	// The marker test must be able to fail: the relay's bytes, decrypted,
	// would hold it; here we check the agent's own log does hold the keep
	// ids, i.e. we searched the right things.
	for _, id := range []string{k.ID, fk.ID} {
		if !bytes.Contains(places["agent log"], []byte(id)) {
			t.Errorf("agent log does not mention keep %s: wrong log searched", id)
		}
	}
}

// places stops the agent and returns everything it held, by where: its
// log, the relay's buffers, the events and records of the given keeps as
// the API served them, and every file of its state folder (the database
// and its WAL, keep folders and their TMPDIR).
func (h *harness) places(ctx context.Context, ids ...string) map[string][]byte {
	t := h.t
	t.Helper()
	var evs bytes.Buffer
	for _, id := range ids {
		if err := h.client.Events(ctx, id, false, func(e Event) { fmt.Fprintf(&evs, "%s %s\n", e.Type, e.Message) }); err != nil {
			t.Fatal(err)
		}
	}
	keepJSON, _ := h.client.List(ctx)
	h.stop() // flush and close the database before reading its files
	places := map[string][]byte{
		"agent log":   h.log.Bytes(),
		"relay":       h.relay.Bytes(),
		"events":      evs.Bytes(),
		"keeps (API)": []byte(fmt.Sprint(keepJSON)),
	}
	files := 0
	filepath.WalkDir(h.stateDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil {
			places[p] = b
			files++
		}
		return nil
	})
	if _, ok := places[filepath.Join(h.stateDir, DBFile)]; !ok {
		t.Fatalf("no database among the %d files of the state folder", files)
	}
	return places
}
