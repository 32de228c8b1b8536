package packages

import (
	"fmt"
	"io"
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
// returns the blob's path and whether this call created it. A file already
// at that path is kept only if its bytes match the digest: a damaged copy
// (a disk fault, a hand edit) of the same size is replaced, so that pulling
// the package again repairs the store. On any error the temporary file is
// removed.
//
// oras-go's oci.Storage.Push (v2.7.0) is not used for this: its ingest
// clears the path it means to remove before its cleanup runs, so a failed
// write (a full disk) leaves a partial file in ingest/ on every attempt.
func (s *Store) writeBlob(desc ocispec.Descriptor, data []byte) (path string, created bool, err error) {
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return "", false, fmt.Errorf("blob bytes do not match %s: %w", desc.Digest, ErrMismatch)
	}
	path = filepath.Join(s.dir, ocispec.ImageBlobsDir, desc.Digest.Algorithm().String(), desc.Digest.Encoded())
	if sameBlob(path, desc) {
		return path, false, nil // already there, and intact
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

// sameBlob reports whether path is a regular file holding exactly the
// blob desc names.
func sameBlob(path string, desc ocispec.Descriptor) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() || st.Size() != desc.Size {
		return false
	}
	v := desc.Digest.Verifier()
	n, err := io.Copy(v, io.LimitReader(f, desc.Size+1))
	return err == nil && n == desc.Size && v.Verified()
}
