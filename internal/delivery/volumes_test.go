package delivery

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
)

// TestVolumes: the host's volumes are the workload's preopens (the fileio
// workload writes in one, and its escapes out of it are refused); the
// keep refuses a host path that is not a folder and a guest path the
// config already names, and then runs nothing.
func TestVolumes(t *testing.T) {
	base := t.TempDir()
	vol := filepath.Join(base, "vol")
	os.Mkdir(vol, 0o755)
	os.WriteFile(filepath.Join(base, "outside.txt"), []byte("outside\n"), 0o644)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o644)
	dir := func(guest, host string) []config.File {
		return []config.File{{Kind: config.KindDir, Name: guest, Path: host}}
	}

	art := load(t, "go", "fileio", []byte(stdio+"[env]\nDIR = \"/data\"\n"))
	k, sess, v := pair(t, art.Digest.String())
	var out syncBuf
	res, err, _, kerr := runWith(t, k, sess, v, Delivery{Artifact: art, Stdout: &out, Stderr: &out}, ServeOptions{Volumes: dir("/data", vol)})
	if err != nil || kerr != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "ok read via symlink out refused") || !strings.Contains(out.String(), "done\n") {
		t.Fatalf("fileio in a volume: %+v %v (keep %v):\n%s", res, err, kerr, out.String())
	}
	if target, err := os.Readlink(filepath.Join(vol, "link")); err != nil || target != "sub/b.txt" {
		t.Errorf("the workload's link in the host folder: %q %v", target, err)
	}

	hello := load(t, "c", "hello", []byte(stdio))
	named := load(t, "c", "hello", []byte("[[files]]\nkind = \"stdin\"\nname = \"/data\"\n[[files]]\nkind = \"stdout\"\n[[files]]\nkind = \"stderr\"\n"))
	for _, c := range []struct {
		name  string
		named bool // the config names a descriptor /data
		vols  []config.File
		want  string
	}{
		{"host file", false, dir("/data", file), "volume /data: host path " + file + " is not a folder"},
		{"host missing", false, dir("/data", filepath.Join(base, "missing")), "volume /data: stat "},
		{"config name", true, dir("/data", vol), "volume /data: the config already names a descriptor /data"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := hello
			if c.named {
				a = named
			}
			k, sess, v := pair(t, a.Digest.String())
			var out syncBuf
			_, err, _, kerr := runWith(t, k, sess, v, Delivery{Artifact: a, Stdout: &out}, ServeOptions{Volumes: c.vols})
			checkRefused(t, err, kerr, c.want, out.String())
		})
	}
}

// TestLongRefusal: a refusal whose text quotes something long that the
// keep did not write (here a host path of 2 MiB; a secret service's error
// detail is another) still reaches the client as a refusal, cut to
// maxRefusal bytes, instead of an error frame over MaxFrame that is never
// sent and leaves the client with a bare end of connection.
func TestLongRefusal(t *testing.T) {
	art := load(t, "c", "hello", []byte(stdio))
	k, sess, v := pair(t, art.Digest.String())
	long := "/nonexistent/" + strings.Repeat("a", 2<<20)
	var out syncBuf
	_, err, _, kerr := runWith(t, k, sess, v, Delivery{Artifact: art, Stdout: &out},
		ServeOptions{Volumes: []config.File{{Kind: config.KindDir, Name: "/data", Path: long}}})
	checkRefused(t, err, kerr, "volume /data: ", out.String())
	var re *RefusedError
	if errors.As(err, &re) && (len(re.Reason) > maxRefusal || !strings.HasSuffix(re.Reason, "...")) {
		t.Errorf("refusal of %d bytes (%.40q...), want at most %d ending in ...", len(re.Reason), re.Reason, maxRefusal)
	}
}
