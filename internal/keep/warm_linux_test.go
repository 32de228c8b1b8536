//go:build linux

package keep

import (
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestAwaitKeep: a process started ahead takes its keep's flags and
// descriptors from one control message, and refuses anything else.
func TestAwaitKeep(t *testing.T) {
	out, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	helloR, helloW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer helloR.Close()
	defer helloW.Close()
	rights := unix.UnixRights(int(out.Fd()), int(helloW.Fd()))
	for _, tc := range []struct {
		name   string
		msg    []byte
		rights []byte
		hangUp bool
		want   []string
		err    string
	}{
		{name: "keep", msg: []byte(`["--dir","/k","--backend","nil"]`), rights: rights, want: []string{"--dir", "/k", "--backend", "nil"}},
		{name: "agent gone", hangUp: true, err: io.EOF.Error()},
		{name: "no descriptors", msg: []byte(`["--dir","/k"]`), err: "no descriptors"},
		{name: "one descriptor", msg: []byte(`[]`), rights: unix.UnixRights(int(out.Fd())), err: "want the output file and the hello pipe"},
		{name: "not json", msg: []byte(`--dir /k`), rights: rights, err: "not a JSON list of strings"},
		{name: "not strings", msg: []byte(`[1,2]`), rights: rights, err: "not a JSON list of strings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fds[1])
			if tc.hangUp {
				unix.Close(fds[0])
			} else {
				defer unix.Close(fds[0])
				if err := unix.Sendmsg(fds[0], tc.msg, tc.rights, nil, 0); err != nil {
					t.Fatal(err)
				}
			}
			// The targets stand for descriptors 1, 2 and 3.
			targets := make([]int, 3)
			for i := range targets {
				if targets[i], err = unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
					t.Fatal(err)
				}
				defer unix.Close(targets[i])
			}
			args, err := awaitKeep(fds[1], targets[0], targets[1], targets[2])
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, %v; want error %q", args, err, tc.err)
				}
				return
			}
			if err != nil || strings.Join(args, " ") != strings.Join(tc.want, " ") {
				t.Fatalf("got %q, %v; want %q", args, err, tc.want)
			}
			// The output targets are the keep's output file now, the
			// hello target its hello pipe.
			if _, err := unix.Write(targets[1], []byte("log line\n")); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(out.Name()); string(b) != "log line\n" {
				t.Errorf("output file holds %q", b)
			}
			if _, err := unix.Write(targets[2], []byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := io.ReadFull(helloR, buf); err != nil || string(buf) != "hello" {
				t.Errorf("hello pipe read %q, %v", buf, err)
			}
		})
	}
}
