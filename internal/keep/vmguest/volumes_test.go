package vmguest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/keep/vmproto"
)

// TestGuestVolumes: the guest mounts each volume of the launch request
// (read-only when asked) and the keep preopens the mounted folders at the
// volumes' guest paths. The fake machine's "mounts" are host folders.
func TestGuestVolumes(t *testing.T) {
	art := cFixture(t, "volumes")
	base := t.TempDir()
	ro, rw := filepath.Join(base, "ro"), filepath.Join(base, "rw")
	os.Mkdir(ro, 0o755)
	os.Mkdir(rw, 0o755)
	os.WriteFile(filepath.Join(ro, "in.txt"), []byte("from the host\n"), 0o644)
	os.WriteFile(filepath.Join(base, "secret.txt"), []byte("outside\n"), 0o644)
	os.Symlink(filepath.Join(base, "secret.txt"), filepath.Join(ro, "escape"))
	m := &fakeMachine{volumes: map[string]string{"vol0": ro, "vol1": rw}}
	conn, _, _ := bootMachine(t, m)
	sess, _ := delivery.NewSession()
	req := request(t, "nil", sess, art.Digest.String())
	req.Volumes = []vmproto.Volume{{Tag: "vol0", Guest: "/in", ReadOnly: true}, {Tag: "vol1", Guest: "/out"}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, env := handshake(ctx, t, conn, req)
	ver := &delivery.Verified{SPKI: env.Key}
	var out strings.Builder
	res, err := sess.Deliver(ctx, h.Stream(), ver, delivery.Delivery{Artifact: art, Args: []string{"/in", "/out"}, Stdout: &out, Stderr: io.Discard})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("deliver: %v, %+v:\n%s", err, res, out.String())
	}
	for _, want := range []string{"read from the host\n", "wrote out.txt\n", "read-only create refused\n", "escape refused\n", "done\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if b, _ := os.ReadFile(filepath.Join(rw, "out.txt")); string(b) != "copied: from the host\n" {
		t.Errorf("out.txt in the read-write volume: %q", b)
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); err == nil {
		t.Error("the workload created a file in the read-only volume")
	}
	if want := []string{"vol0 ro=true", "vol1 ro=false"}; !reflect.DeepEqual(m.mounted, want) {
		t.Errorf("mounts %v, want %v", m.mounted, want)
	}
}

// A volume whose device is missing fails the keep before its hello,
// naming the volume.
func TestGuestVolumeMissing(t *testing.T) {
	conn, _, _ := bootMachine(t, &fakeMachine{volumes: map[string]string{}})
	sess, _ := delivery.NewSession()
	req := request(t, "nil", sess, "sha256:"+strings.Repeat("0", 64))
	req.Volumes = []vmproto.Volume{{Tag: "vol0", Guest: "/data"}}
	_, err := vmproto.Handshake(context.Background(), conn, req)
	if err == nil || !strings.Contains(err.Error(), "volume /data: no such virtio-fs tag") {
		t.Fatalf("handshake: %v, want the missing volume named", err)
	}
}
