package runtime

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// sandbox makes base/outside.txt and base/data (the preopen), and returns
// both paths.
func sandbox(t *testing.T) (base, data string) {
	t.Helper()
	base = t.TempDir()
	data = filepath.Join(base, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(base, "outside.txt"), []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return base, data
}

// dirConfig preopens path as /data at descriptor 5, after a null entry and
// a listener, which the guest's preopen scan must skip.
func dirConfig(path string, ro bool) *config.Config {
	cfg := config.Default()
	cfg.Files = append(cfg.Files,
		config.File{Kind: config.KindNull, Name: "null"},
		config.File{Kind: config.KindListen, Name: "unused", Prot: "tcp", Addr: "127.0.0.1"},
		config.File{Kind: config.KindDir, Name: "/data", Path: path, ReadOnly: ro})
	return cfg
}

func TestFileIOGo(t *testing.T) {
	base, data := sandbox(t)
	if err := os.Symlink(filepath.Join(base, "outside.txt"), filepath.Join(data, "hostabs")); err != nil {
		t.Fatal(err)
	}
	// The path is relative to the config folder.
	r := run(t, fixtures.Go(t, "fileio"), Options{Config: dirConfig("data", false), ConfigDir: base, Env: map[string]string{"DIR": "/data"}})
	if r.err != nil || r.code != 0 || !strings.HasSuffix(r.stdout, "done\n") {
		t.Fatalf("code %d, err %v\nstdout:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, r.stderr)
	}
	for _, want := range []string{"ok read via symlink out refused", "ok read via symlink chain refused", "ok symlink abs refused", "ok read via absolute symlink refused", "ok write via symlink out refused"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	b, _ := os.ReadFile(filepath.Join(base, "outside.txt"))
	if string(b) != "secret\n" {
		t.Errorf("outside.txt changed: %q", b)
	}
	ents, _ := os.ReadDir(base)
	if len(ents) != 2 {
		t.Errorf("files appeared next to the preopen: %v", ents)
	}
	if _, err := os.Lstat(filepath.Join(data, "link")); err != nil {
		t.Errorf("the symlink made inside is not on the host: %v", err)
	}
}

func TestFileIOReadOnly(t *testing.T) {
	base, data := sandbox(t)
	if err := os.WriteFile(filepath.Join(data, "ro.txt"), []byte("read only\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	r := run(t, fixtures.Go(t, "fileio"), Options{Config: dirConfig(data, true), ConfigDir: base, Env: map[string]string{"DIR": "/data", "RO": "1"}})
	if r.err != nil || r.code != 0 || !strings.HasSuffix(r.stdout, "done\n") {
		t.Fatalf("code %d, err %v\nstdout:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "ok create refused: Read-only file system") {
		t.Errorf("create not refused with EROFS:\n%s", r.stdout)
	}
	ents, _ := os.ReadDir(data)
	if len(ents) != 1 {
		t.Errorf("the read-only preopen changed: %v", ents)
	}
	fi, _ := os.Stat(filepath.Join(data, "ro.txt"))
	if fi.ModTime().After(before) {
		t.Error("ro.txt was modified")
	}
}

func TestFileIOC(t *testing.T) {
	base, data := sandbox(t)
	r := run(t, fixtures.C(t, "fileio"), Options{Config: dirConfig(data, false), ConfigDir: base, Args: []string{"/data"}})
	want := "size 13\nread written by C\nreaddir found 1\nescape refused\ndone\n"
	if r.err != nil || r.code != 0 || r.stdout != want {
		t.Fatalf("code %d, err %v\nstdout:\n%s\nwant:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, want, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(base, "escape.txt")); err == nil {
		t.Error("escape.txt was created outside the preopen")
	}
}

func TestClockRand(t *testing.T) {
	r := run(t, fixtures.Go(t, "clockrand"), Options{Env: map[string]string{"NOW": strconv.FormatInt(time.Now().Unix(), 10)}})
	if r.err != nil || r.code != 0 || r.stdout != "ok sleep\nok realtime\nok random\n" {
		t.Fatalf("code %d, err %v, stdout %q", r.code, r.err, r.stdout)
	}
}

// TestPOSIXFileSystem runs the cases of the posixfs C fixture, each in a
// fresh preopen: the file-system bugs of issue 12, found by hand, each of
// which used to fail (see the fixture for the rule each case checks).
func TestPOSIXFileSystem(t *testing.T) {
	wasm := fixtures.C(t, "posixfs")
	for _, name := range []string{
		"append_cleared", "pwrite_append", "rename_dirs", "symlink_absolute", "lseek_dir",
		"rmdir_dot", "pread_dir", "link_follow", "rights_dropped",
	} {
		t.Run(name, func(t *testing.T) {
			base, data := sandbox(t)
			r := run(t, wasm, Options{Config: dirConfig(data, false), ConfigDir: base, Args: []string{name}})
			if r.err != nil || r.code != 0 || r.stdout != "ok "+name+"\n" {
				t.Fatalf("code %d, err %v\nstdout:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, r.stderr)
			}
			if _, err := os.Lstat(filepath.Join(base, "l")); err == nil {
				t.Error("a file appeared next to the preopen")
			}
		})
	}
}
