package packages

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/castellan-dev/castellan/internal/workload"
)

// blobCount counts the files under blobs/sha256.
func blobCount(t *testing.T, s *Store) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Dir(), "blobs", "sha256"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(ents)
}

func TestRemove(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	build := func(wasm, cfg []byte, names ...string) digest.Digest {
		t.Helper()
		art, err := s.Build(wasm, cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if _, err := s.Tag(art.Digest, n); err != nil {
				t.Fatal(err)
			}
		}
		return art.Digest
	}
	// a and b share their module; a has two names; old is the manifest
	// that "moved:1" pointed at before it moved, kept untagged.
	a := build(module(1), []byte("args = [\"a\"]\n"), "a:1", "a:2")
	b := build(module(1), []byte("args = [\"b\"]\n"), "b:1")
	old := build(module(2), nil, "moved:1")
	moved := build(module(3), nil, "moved:1")
	if n := blobCount(t, s); n != 13 {
		t.Fatalf("%d blobs before, want 13 (4 manifests, 4 configs, 3 modules, 2 TOML)", n)
	}

	// One of two names: the manifest stays, nothing is collected.
	r, err := s.Remove(ctx, []string{"a:1"})
	if err != nil || !slices.Equal(r.Names, []string{"a:1"}) || len(r.Manifests) != 0 || r.Blobs != 0 {
		t.Fatalf("rm a:1: %+v %v", r, err)
	}
	if _, err := s.Fetch(ctx, "a:2"); err != nil {
		t.Fatalf("a:2 after rm a:1: %v", err)
	}
	// The last name: the manifest, its config JSON and TOML go; the
	// module that b uses stays. The untagged old manifest stays.
	r, err = s.Remove(ctx, []string{"a:2"})
	if err != nil || !slices.Equal(r.Names, []string{"a:2"}) || !slices.Equal(r.Manifests, []digest.Digest{a}) || r.Blobs != 3 || r.Bytes == 0 {
		t.Fatalf("rm a:2: %+v %v", r, err)
	}
	if _, err := s.Fetch(ctx, "b:1"); err != nil {
		t.Fatalf("b:1 after rm a:2: %v", err)
	}
	if _, err := s.Fetch(ctx, "old@"+old.String()); err != nil {
		t.Fatalf("the untagged manifest after rm a:2: %v", err)
	}

	// Unknown references remove nothing, even beside a good one.
	before := storeFiles(t, s)
	if _, err := s.Remove(ctx, []string{"b:1", "nope:1"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("rm nope:1: %v", err)
	}
	if _, err := s.Remove(ctx, []string{"oci-layout:/tmp/x@" + b.String()}); err == nil {
		t.Fatal("rm of an oci-layout reference succeeded")
	}
	if !slices.Equal(before, storeFiles(t, s)) {
		t.Fatalf("a refused rm changed the store:\n%v\n%v", before, storeFiles(t, s))
	}

	// Pinned references remove the manifest and all its names.
	r, err = s.Remove(ctx, []string{"b@" + b.String(), "old@" + old.String(), "moved:1"})
	if err != nil || !slices.Equal(r.Names, []string{"b:1", "moved:1"}) || len(r.Manifests) != 3 {
		t.Fatalf("rm by digest: %+v %v", r, err)
	}
	if n := blobCount(t, s); n != 0 {
		t.Errorf("%d blobs left in an empty store", n)
	}
	if l, err := s.List(ctx); err != nil || len(l) != 0 {
		t.Errorf("store lists %v %v after removing everything", l, err)
	}
	_ = moved

	// A build after the collection writes its blobs again.
	c := build(module(1), []byte("args = [\"a\"]\n"), "a:1")
	if c != a {
		t.Fatalf("rebuilt digest %s, want %s", c, a)
	}
	if _, err := s.Fetch(ctx, "a:1"); err != nil {
		t.Fatalf("a:1 rebuilt: %v", err)
	}
}

// TestPutWaitsForLock: a build (put) writes nothing while another holder
// of the store's lock (a package rm collecting unused blobs) works, so an
// rm can never collect the blobs of a build that has not recorded its
// package yet; once the lock is free the build completes.
func TestPutWaitsForLock(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, Options{})
	art, err := workload.New(module(7), nil)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := lockDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.put(ctx, art) }()
	time.Sleep(200 * time.Millisecond) // gives a wrong put the chance to write; never fails a right one
	if n := blobCount(t, s); n != 0 {
		t.Fatalf("the build wrote %d blobs while the store was locked", n)
	}
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := s.Fetch(ctx, "x@"+art.Digest.String()); err != nil {
		t.Fatalf("package after the lock was released: %v", err)
	}
}
