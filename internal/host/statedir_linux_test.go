//go:build linux

package host

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStateDirOthersCannotWrite: a state folder another local user can
// write to (group- or world-writable, or theirs) is refused before any
// token is created or trusted: whoever writes there could add a token hash
// to the database or plant the agent's TLS key.
func TestStateDirOthersCannotWrite(t *testing.T) {
	cases := []struct {
		name  string
		mode  os.FileMode
		owner int // -1: ours
		want  string
	}{
		{"world-writable", 0o777, -1, "writable by group or others"},
		{"group-writable", 0o770, -1, "writable by group or others"},
		{"world-writable, sticky", 0o777 | os.ModeSticky, -1, "writable by group or others"},
		{"another user's", 0o700, 65534, "belongs to uid 65534"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// Short: New checks the keeps' socket paths' length first.
			dir, err := os.MkdirTemp("", "cst")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			if err := os.Chmod(dir, c.mode); err != nil {
				t.Fatal(err)
			}
			if c.owner >= 0 {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give the folder to another user")
				}
				if err := os.Chown(dir, c.owner, c.owner); err != nil {
					t.Fatal(err)
				}
			}
			tok, err := CreateToken(dir, "x")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CreateToken in a %s state folder: token %q, error %v; want an error with %q", c.name, tok, err, c.want)
			}
			for _, f := range []string{DBFile, "keeps"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					t.Fatalf("%s was created in a refused state folder", f)
				}
			}
			_, err = New(Config{StateDir: dir})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("New with a %s state folder: %v; want an error with %q", c.name, err, c.want)
			}
			for _, f := range []string{DBFile, "keeps", "agent.lock"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					t.Fatalf("New created %s in a refused state folder", f)
				}
			}
		})
	}
	// Ours and private: accepted.
	dir := t.TempDir()
	if _, err := CreateToken(dir, "x"); err != nil {
		t.Fatalf("a private state folder: %v", err)
	}
}
