package packages

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestStaleIngestRemoved: Open removes what a writer that died left in
// ingest/ an hour ago or more, and leaves a write in progress alone.
func TestStaleIngestRemoved(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	ingest := filepath.Join(dir, ingestDir)
	os.MkdirAll(ingest, 0o755)
	old, fresh := filepath.Join(ingest, "aaaa_1"), filepath.Join(ingest, "bbbb_2")
	for _, p := range []string{old, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	long := time.Now().Add(-2 * time.Hour)
	os.Chtimes(old, long, long)
	if _, err := Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("stale ingest file still there: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a write in progress was removed: %v", err)
	}
}

// damage flips the last byte of a blob in the store, keeping its size.
func damage(t *testing.T, s *Store, d digest.Digest) {
	t.Helper()
	p := filepath.Join(s.Dir(), "blobs", d.Algorithm().String(), d.Encoded())
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-1] ^= 0xff
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedBlobIsRepaired: a blob of the right size but the wrong bytes
// in the store (a disk fault, a crash on a file system that lost data, a
// hand edit) is never trusted, and pulling the package again, or fetching
// it by its pinned digest, writes it again instead of keeping the damaged
// copy because of its size.
func TestDamagedBlobIsRepaired(t *testing.T) {
	ctx := context.Background()
	reg := newRegistry(t)
	ref := reg.host + "/t/damaged:v1"
	art := publish(t, ref, module(60), []byte("args = [\"a\"]\n"))

	t.Run("pull again", func(t *testing.T) {
		s := newStore(t, Options{})
		if _, err := s.Pull(ctx, ref); err != nil {
			t.Fatal(err)
		}
		damage(t, s, art.WasmDesc.Digest)
		if _, err := s.fetchLocal(ctx, ref); !errors.Is(err, ErrMismatch) {
			t.Fatalf("a damaged blob was read: %v", err)
		}
		if _, err := s.Pull(ctx, ref); err != nil {
			t.Fatal(err)
		}
		if _, err := s.fetchLocal(ctx, ref); err != nil {
			t.Fatalf("pulling again left the store damaged: %v", err)
		}
	})
	t.Run("fetch by pinned digest", func(t *testing.T) {
		var warnings []string
		s := newStore(t, Options{Warnf: func(f string, a ...any) { warnings = append(warnings, fmt.Sprintf(f, a...)) }})
		pinned := reg.host + "/t/damaged@" + art.Digest.String()
		if _, err := s.Fetch(ctx, pinned); err != nil {
			t.Fatal(err)
		}
		damage(t, s, art.TOMLDesc.Digest)
		got, err := s.Fetch(ctx, pinned)
		if err != nil {
			t.Fatalf("a damaged local copy of a pinned package was not fetched again: %v", err)
		}
		if got.Digest != art.Digest || len(warnings) != 1 || !strings.Contains(warnings[0], "fetching it again") {
			t.Fatalf("digest %s, warnings %q", got.Digest, warnings)
		}
		if _, err := s.fetchLocal(ctx, pinned); err != nil {
			t.Fatalf("the store is still damaged: %v", err)
		}
	})
}
