package packages

import (
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"oras.land/oras-go/v2/registry"
)

// LayoutPrefix starts a reference to an OCI image-layout folder:
// "oci-layout:DIR@sha256:..." or "oci-layout:DIR:TAG".
const LayoutPrefix = "oci-layout:"

// DefaultTag is the tag of a reference that names neither a tag nor a digest.
const DefaultTag = "latest"

// Ref is a parsed package reference. Three forms exist:
//
//	hello:1.0, org/hello@sha256:...          the local store
//	registry.example.com/org/hello:1.0       a registry (the first part has a '.', a ':' or is localhost)
//	oci-layout:DIR@sha256:..., oci-layout:DIR:TAG   an OCI image-layout folder, offline
type Ref struct {
	Layout     string        // the folder of an oci-layout reference, else ""
	Registry   string        // host[:port] of a registry, "" otherwise
	Repository string        // "hello", "org/hello"; "" for oci-layout
	Tag        string        // "" when the reference is by digest only
	Digest     digest.Digest // the pinned digest, "" when none
}

var tagRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`) })

// ParseRef parses a package reference. A reference with neither tag nor
// digest gets DefaultTag.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, fmt.Errorf("empty package reference")
	}
	if strings.ContainsAny(s, " \t\r\n\x00") {
		return Ref{}, fmt.Errorf("package reference %q contains white space", s)
	}
	if strings.HasSuffix(s, ":") || strings.HasSuffix(s, "@") {
		return Ref{}, fmt.Errorf("package reference %q ends without a tag or digest", s)
	}
	if rest, ok := strings.CutPrefix(s, LayoutPrefix); ok {
		return parseLayoutRef(s, rest)
	}
	first, _, hasSlash := strings.Cut(s, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r, err := registry.ParseReference(s)
		if err != nil {
			return Ref{}, fmt.Errorf("package reference %q: %w", s, err)
		}
		ref := Ref{Registry: r.Registry, Repository: r.Repository}
		if err := ref.setReference(s, r.Reference); err != nil {
			return Ref{}, err
		}
		return ref, nil
	}
	// A local name: reuse the registry grammar with a placeholder host.
	r, err := registry.ParseReference("local.invalid/" + s)
	if err != nil {
		return Ref{}, fmt.Errorf("package reference %q: %v", s, strings.TrimPrefix(err.Error(), "invalid reference: "))
	}
	if r.Repository+":" == LayoutPrefix {
		return Ref{}, fmt.Errorf("package reference %q: %q is reserved for %sDIR references", s, r.Repository, LayoutPrefix)
	}
	ref := Ref{Repository: r.Repository}
	if err := ref.setReference(s, r.Reference); err != nil {
		return Ref{}, err
	}
	return ref, nil
}

// setReference fills Tag or Digest from the reference part. registry.ParseReference
// drops the tag of "repo:tag@digest"; the digest is what counts.
func (r *Ref) setReference(s, ref string) error {
	switch {
	case ref == "":
		r.Tag = DefaultTag
	case strings.Contains(ref, ":"):
		d, err := parseDigest(s, ref)
		if err != nil {
			return err
		}
		r.Digest = d
	default:
		r.Tag = ref
	}
	return nil
}

func parseLayoutRef(s, rest string) (Ref, error) {
	var ref Ref
	if i := strings.LastIndex(rest, "@"); i >= 0 {
		d, err := parseDigest(s, rest[i+1:])
		if err != nil {
			return Ref{}, err
		}
		ref.Layout, ref.Digest = rest[:i], d
	} else if i := strings.LastIndex(rest, ":"); i >= 0 && !strings.Contains(rest[i+1:], "/") {
		ref.Layout, ref.Tag = rest[:i], rest[i+1:]
		if !tagRE().MatchString(ref.Tag) {
			return Ref{}, fmt.Errorf("package reference %q: %q is not a valid tag", s, ref.Tag)
		}
	} else {
		return Ref{}, fmt.Errorf("package reference %q: want oci-layout:DIR@sha256:DIGEST or oci-layout:DIR:TAG", s)
	}
	if ref.Layout == "" {
		return Ref{}, fmt.Errorf("package reference %q: no folder after %s", s, LayoutPrefix)
	}
	return ref, nil
}

func parseDigest(s, d string) (digest.Digest, error) {
	dg, err := digest.Parse(d)
	if err != nil {
		return "", fmt.Errorf("package reference %q: %q is not a valid digest", s, d)
	}
	if dg.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("package reference %q: digest algorithm %s is not supported (want sha256)", s, dg.Algorithm())
	}
	return dg, nil
}

// Remote reports whether the reference names a registry.
func (r Ref) Remote() bool { return r.Registry != "" }

// Name is the reference without its digest ("hello:1.0",
// "registry.example.com/hello:1.0"); it is the key of a tag in the local
// store, and "" for a digest-only reference.
func (r Ref) Name() string {
	if r.Tag == "" {
		return ""
	}
	return r.repoPath() + ":" + r.Tag
}

func (r Ref) repoPath() string {
	switch {
	case r.Layout != "":
		return LayoutPrefix + r.Layout
	case r.Registry != "":
		return r.Registry + "/" + r.Repository
	}
	return r.Repository
}

// String formats the reference as ParseRef reads it.
func (r Ref) String() string {
	s := r.repoPath()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// reference is what a registry or store resolves: the digest when pinned,
// else the tag.
func (r Ref) reference() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}
