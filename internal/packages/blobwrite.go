package packages

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ingestDir holds blobs being written (the folder oras-go uses too).
const ingestDir = "ingest"

// staleIngest is how old a file in ingest/ must be for Open to remove it:
// only a process that died while writing leaves one, and writes take
// seconds (the bytes are in memory by then).
const staleIngest = time.Hour

// writeBlob writes one verified blob into the store: to a temporary file
// in ingest/, synced, made read-only and renamed to blobs/sha256/HEX. It
// returns the blob's path and whether this call created it. On any error
// the temporary file is removed.
//
// oras-go's oci.Storage.Push (v2.7.0) is not used for this: its ingest
// clears the path it means to remove before its cleanup runs, so a failed
// write (a full disk) leaves a partial file in ingest/ on every attempt.
func (s *Store) writeBlob(desc ocispec.Descriptor, data []byte) (path string, created bool, err error) {
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return "", false, fmt.Errorf("blob bytes do not match %s: %w", desc.Digest, ErrMismatch)
	}
	path = filepath.Join(s.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	if st, err := os.Stat(path); err == nil && st.Size() == desc.Size {
		return path, false, nil // already there (verified when read)
	}
	ingest := filepath.Join(s.dir, ingestDir)
	if err := os.MkdirAll(ingest, 0o755); err != nil {
		return path, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return path, false, err
	}
	if err := writeVia(ingest, desc.Digest.Encoded()+"_*", path, data, 0o444); err != nil {
		return path, false, err
	}
	return path, true, nil
}

// removeStaleIngest removes what writers that died left in ingest/.
func removeStaleIngest(dir string) {
	ents, err := os.ReadDir(filepath.Join(dir, ingestDir))
	if err != nil {
		return
	}
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || time.Since(info.ModTime()) < staleIngest || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		os.Remove(filepath.Join(dir, ingestDir, e.Name()))
	}
}
