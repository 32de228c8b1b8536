package keep

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Volume is a host folder a keep preopens for its workload at a
// guest path: a pod's volume, given by the containerd shim. Volumes are
// part of how the host starts a keep (Spec), never of what a client
// delivers: a remote client of the host agent cannot make a keep open the
// host's folders. The workload's paths are resolved inside the folder
// (os.Root): no "..", symlink or absolute link leads out of it.
type Volume struct {
	Guest    string `json:"guest"` // the path the workload sees, absolute
	Host     string `json:"host"`  // the folder on the host, absolute
	ReadOnly bool   `json:"readonly,omitempty"`
}

// Bounds on a keep's volumes.
const (
	MaxVolumes    = 64
	maxVolumePath = 4096
)

// CheckVolumes checks volume paths: absolute, clean, no NUL, each guest
// path once, never the guest's root, at most MaxVolumes.
func CheckVolumes(vs []Volume) error {
	if len(vs) > MaxVolumes {
		return fmt.Errorf("%d volumes, more than %d", len(vs), MaxVolumes)
	}
	seen := map[string]bool{}
	for _, v := range vs {
		for _, p := range []struct{ what, path string }{{"guest", v.Guest}, {"host", v.Host}} {
			if len(p.path) > maxVolumePath || strings.ContainsRune(p.path, 0) || !path.IsAbs(p.path) || path.Clean(p.path) != p.path {
				s := p.path
				if len(s) > 64 {
					s = s[:64] + "..."
				}
				return fmt.Errorf("volume %s path %q is not an absolute, clean path", p.what, s)
			}
		}
		if v.Guest == "/" {
			return errors.New("volume guest path / is the workload's root, not a folder in it")
		}
		if seen[v.Guest] {
			return fmt.Errorf("volume guest path %s is given twice", v.Guest)
		}
		seen[v.Guest] = true
	}
	return nil
}
