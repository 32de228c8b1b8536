package packages

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// smallDisk mounts a tmpfs of size bytes on a new folder and returns it,
// or skips the test when this process may not mount.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		t.Skip("full-disk test skipped: mounting a small tmpfs needs root with CAP_SYS_ADMIN (scripts/test runs as root)")
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Skipf("full-disk test skipped: cannot mount a tmpfs (needs CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// fill fills the file system of dir up to leave bytes free (or less).
func fill(t *testing.T, dir string, leave int64) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	st, _ := f.Stat()
	if err := f.Truncate(max(st.Size()-leave, 0)); err != nil {
		t.Fatal(err)
	}
}

// snapshot describes every file and folder under dir: path, mode, size
// and a hash of the contents.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(&b, "%s %v %d", rel, info.Mode(), info.Size())
		if info.Mode().IsRegular() {
			c, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " %x", sha256.Sum256(c))
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestFullDisk: when the store's disk fills during a build or a pull, the
// write fails with the file system's error and leaves the store exactly as
// it was (no partial blob in ingest/, no orphan blob), however often it is
// retried; once there is room, the same build succeeds.
func TestFullDisk(t *testing.T) {
	disk := smallDisk(t, 512<<10)
	reg := newRegistry(t)
	s, err := Open(filepath.Join(disk, "store"), Options{PlainHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(module(60), nil); err != nil { // a store in use
		t.Fatal(err)
	}
	big := append(module(61), make([]byte, 64<<10)...)
	published := append(module(62), make([]byte, 64<<10)...)
	publish(t, reg.host+"/t/full:v1", published, []byte("args = [\"x\"]\n"))
	// Room for the small blobs (the config is written, then removed
	// again), not for the Wasm layer.
	fill(t, disk, 16<<10)
	before := snapshot(t, s.Dir())
	for i := range 3 {
		_, err := s.Build(big, []byte("args = [\"y\"]\n"))
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "package store "+s.Dir()+": write wasm ") {
			t.Fatalf("build %d on a full disk: %v", i, err)
		}
		if after := snapshot(t, s.Dir()); after != before {
			t.Fatalf("build %d on a full disk changed the store:\nbefore:\n%s\nafter:\n%s", i, before, after)
		}
		_, err = s.Pull(context.Background(), reg.host+"/t/full:v1")
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("pull %d on a full disk: %v", i, err)
		}
		if after := snapshot(t, s.Dir()); after != before {
			t.Fatalf("pull %d on a full disk changed the store:\nbefore:\n%s\nafter:\n%s", i, before, after)
		}
	}
	if err := os.Remove(filepath.Join(disk, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Build(big, []byte("args = [\"y\"]\n")); err != nil {
		t.Fatalf("build with room: %v", err)
	}
	if _, err := s.Pull(context.Background(), reg.host+"/t/full:v1"); err != nil {
		t.Fatalf("pull with room: %v", err)
	}
}
