//go:build linux

package shim_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/keepimage"
)

// imageInitMeasurement is what a sim-snp VM keep of the image in dir
// claims as its launch measurement: the SHA-384 of the image's /init (the
// castellan built into the image, not the test's binary).
func imageInitMeasurement(t *testing.T, dir string) string {
	t.Helper()
	sum, err := keepimage.InitSHA384(filepath.Join(dir, "initrd"))
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(sum)
}

// testVMKeepSecrets is TestContainerd's VM keep with secrets: a sim-snp
// VM keep (one TCG boot) whose config names a secret by kbs:/// reference
// gets it from a real `attest serve` through the relay on its channel,
// the value bound to its digest, and the value is in no file on the node.
func testVMKeepSecrets(t *testing.T, c *containerd, helloGo string) {
	img := c.keepImage(t)
	k := newKBSFixture(t, c, helloGo)
	// The owner adds the keep image's measurement (a VM keep proves the
	// castellan in its image); the service picks it up at its next reload.
	meas := filepath.Join(k.dir, "measurements.toml")
	b, err := os.ReadFile(meas)
	if err != nil {
		t.Fatal(err)
	}
	b = fmt.Appendf(b, "\n[[measurement]]\nplatform = \"snp\"\nvalue = %q\nname = \"the keep image, simulated SEV-SNP\"\n", imageInitMeasurement(t, img))
	if err := os.WriteFile(meas, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(k.log(), "reloaded"); {
		if time.Now().After(deadline) {
			t.Fatalf("the service did not reload its measurements:\n%s", k.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	opts := filepath.Join(t.TempDir(), "shim.toml")
	os.WriteFile(opts, []byte(k.options+fmt.Sprintf("keep = \"vm\"\nkeep_image = %q\n", img)), 0o644)
	out, code := c.run(t, "--runtime-config-path", opts, "--memory-limit", strconv.Itoa(300<<20), "example.com/kbs-a:v1", "kbs-vm-a")
	if code != 0 || !strings.Contains(out, "env DB_PASSWORD="+kbsMarker+"\n") {
		t.Fatalf("a VM keep of workload A: exit status %d, want 0 and the released secret in its environment:\n%s\nservice log:\n%s", code, out, k.log())
	}
	if !strings.Contains(k.log(), "released kbs:///default/db/password to 127.0.0.1:") {
		t.Errorf("the service's log lacks the release:\n%s", k.log())
	}
	if strings.Contains(k.log(), kbsMarker) {
		t.Error("the secret's value is in the service's log")
	}
	filepath.WalkDir(c.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte(kbsMarker)) {
			t.Errorf("the secret's value is in %s", p)
		}
		return nil
	})
}
