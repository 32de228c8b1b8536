package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// TestInspectShowsPackageTextEscaped: the args, environment, descriptor
// names and host paths of a package's config come from whoever built the
// package. package inspect, which a user runs to review a package before
// deploying it, and deploy's refusal of its host folders show them with
// control characters escaped: a package cannot erase or hide the line that
// shows a host folder it maps, nor print a line of its own.
func TestInspectShowsPackageTextEscaped(t *testing.T) {
	w := pkgSetup(t)
	hostile := filepath.Join(w.dir, "hostile.toml")
	toml := `args = ["ok\u001b[2K\rdigest:    sha256:fake\nnames:     trusted:1"]

[env]
K = "v\u001b]0;title\u0007"

[[files]]
kind = "stdin"

[[files]]
kind = "stdout"

[[files]]
kind = "stderr"

[[files]]
kind = "dir"
name = "data\u001b[1A"
path = "/home\u001b[8m"
`
	if err := os.WriteFile(hostile, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	pkgMustRun(t, "package", "build", "-c", hostile, "-t", "hostile:1", w.wasm)
	out, errs, code := pkgRun(t, "package", "inspect", "hostile:1")
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, errs)
	}
	checkTerminalSafe(t, "inspect stdout", out)
	checkTerminalSafe(t, "inspect stderr", errs)
	for _, want := range []string{`ok\x1b[2K\x0ddigest:    sha256:fake\x0anames:     trusted:1`, `host folder /home\x1b[8m`, `data\x1b[1A`, `K=v\x1b]0;title\x07`} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect does not show %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\ndigest:"); n != 1 {
		t.Errorf("inspect shows %d digest lines:\n%s", n, out)
	}
	errs = pkgWantFail(t, 1, `maps host folders that were not allowed: /home\\x1b\[8m \(as data\\x1b\[1A\)`, "deploy", "hostile:1")
	checkTerminalSafe(t, "deploy stderr", errs)
}

// checkTerminalSafe fails if s holds a control character other than the
// newline that ends each line.
func checkTerminalSafe(t *testing.T, what, s string) {
	t.Helper()
	for _, r := range s {
		if r != '\n' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r)) {
			t.Fatalf("%s carries %U from the package:\n%q", what, r, s)
		}
	}
}
