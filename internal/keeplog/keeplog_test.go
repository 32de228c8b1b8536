package keeplog

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

type got struct {
	lines []string
	next  []int64
}

func (g *got) fn(line []byte, next int64) error {
	g.lines = append(g.lines, string(line))
	g.next = append(g.next, next)
	return nil
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// TestFollowEnded: a file read after its writer ended: every line, a
// last line without newline, long lines cut, offsets at line ends.
func TestFollowEnded(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("x", 100)
	if err := os.WriteFile(Path(dir), []byte("one\n\ntwo\n"+long+"\nlast"), 0o600); err != nil {
		t.Fatal(err)
	}
	var g got
	if err := Follow(context.Background(), Path(dir), 0, FollowOptions{MaxLine: 10, Ended: closed()}, g.fn); err != nil {
		t.Fatal(err)
	}
	want := []string{"one", "", "two", long[:10], "last"}
	if fmt.Sprint(g.lines) != fmt.Sprint(want) {
		t.Errorf("lines %q, want %q", g.lines, want)
	}
	if fmt.Sprint(g.next) != fmt.Sprint([]int64{4, 5, 9, 110, 114}) {
		t.Errorf("offsets %v", g.next)
	}
	// Resuming from an offset a reader recorded gives the rest only.
	var r got
	if err := Follow(context.Background(), Path(dir), 9, FollowOptions{MaxLine: 10, Ended: closed()}, r.fn); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(r.lines) != fmt.Sprint(want[3:]) {
		t.Errorf("resumed: %q", r.lines)
	}
}

// TestFollowLive: lines appended while following arrive, a line written in
// two parts arrives whole, and Ended ends the follow after the last bytes.
func TestFollowLive(t *testing.T) {
	dir := t.TempDir()
	ended := make(chan struct{})
	lines := make(chan string, 10)
	done := make(chan error, 1)
	go func() {
		// The file does not exist yet: it is waited for.
		done <- Follow(context.Background(), Path(dir), 0, FollowOptions{Ended: ended, Poll: 20 * time.Millisecond}, func(l []byte, _ int64) error {
			lines <- string(l)
			return nil
		})
	}()
	f, err := Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	next := func() string {
		select {
		case l := <-lines:
			return l
		case <-time.After(2 * time.Minute):
			t.Fatal("no line")
		}
		return ""
	}
	f.WriteString("first\nsec")
	if l := next(); l != "first" {
		t.Fatalf("got %q", l)
	}
	f.WriteString("ond\n")
	if l := next(); l != "second" {
		t.Fatalf("got %q", l)
	}
	f.WriteString("tail")
	close(ended)
	if l := next(); l != "tail" {
		t.Fatalf("got %q", l)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestFollowStops(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(Path(dir), []byte("a\nb\n"), 0o600)
	stop := errors.New("enough")
	err := Follow(context.Background(), Path(dir), 0, FollowOptions{}, func([]byte, int64) error { return stop })
	if err != stop {
		t.Errorf("fn's error: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Follow(ctx, Path(dir), 0, FollowOptions{}, func([]byte, int64) error { return nil }); err != context.Canceled {
		t.Errorf("cancelled: %v", err)
	}
}

// TestLimited: writes pass up to the limit, counting what the file held,
// the one that does not fit only with its whole lines; then OnLimit is
// called once and later writes fail.
func TestLimited(t *testing.T) {
	var b strings.Builder
	calls := 0
	l := &Limited{W: &b, Max: 10, From: 4, OnLimit: func() { calls++ }}
	if n, err := l.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("%d %v", n, err)
	}
	// 3 bytes left: the whole line that fits passes, the rest does not.
	if n, err := l.Write([]byte("d\nefgh\n")); n != 2 || !errors.Is(err, ErrLimit) {
		t.Fatalf("%d %v", n, err)
	}
	if n, err := l.Write([]byte("x")); n != 0 || !errors.Is(err, ErrLimit) {
		t.Fatalf("%d %v", n, err)
	}
	if b.String() != "abcd\n" || calls != 1 {
		t.Errorf("wrote %q, OnLimit called %d times", b.String(), calls)
	}
}

// TestCreateAppends: two writers of one file append, never overwrite.
func TestCreateAppends(t *testing.T) {
	dir := t.TempDir()
	a, _ := Create(dir)
	b, _ := Create(dir)
	a.WriteString("a1\n")
	b.WriteString("b1\n")
	a.WriteString("a2\n")
	a.Close()
	b.Close()
	got, _ := os.ReadFile(Path(dir))
	if string(got) != "a1\nb1\na2\n" {
		t.Errorf("%q", got)
	}
	if st, _ := os.Stat(Path(dir)); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
}

// BenchmarkFollow reads a keep's output file of 40-byte lines to its end,
// as an agent catching up after a restart does (without recording them).
func BenchmarkFollow(b *testing.B) {
	dir := b.TempDir()
	line := strings.Repeat("x", 39) + "\n"
	const n = 100000
	if err := os.WriteFile(Path(dir), []byte(strings.Repeat(line, n)), 0o600); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(line) * n))
	b.ResetTimer()
	for range b.N {
		lines := 0
		Follow(context.Background(), Path(dir), 0, FollowOptions{Ended: closed()}, func([]byte, int64) error { lines++; return nil })
		if lines != n {
			b.Fatalf("%d lines", lines)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "lines/s")
}

// FuzzFollow: whatever a keep wrote, following its file gives one call per
// line (the last one without its newline included), each at most MaxLine
// bytes and a prefix of its line, with offsets that rise to the file's
// size; resuming at any offset given gives the remaining lines.
func FuzzFollow(f *testing.F) {
	for _, s := range []string{"", "\n", "a\nb\n", "no newline", strings.Repeat("x", 40) + "\nshort\n", "\n\n\n", "a\r\nb"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(Path(dir), data, 0o600); err != nil {
			t.Fatal(err)
		}
		const maxLine = 16
		var g got
		if err := Follow(context.Background(), Path(dir), 0, FollowOptions{MaxLine: maxLine, Ended: closed()}, g.fn); err != nil {
			t.Fatal(err)
		}
		want := strings.Split(string(data), "\n")
		if len(data) == 0 || data[len(data)-1] == '\n' {
			want = want[:len(want)-1]
		}
		if len(g.lines) != len(want) {
			t.Fatalf("%d lines, want %d", len(g.lines), len(want))
		}
		prev := int64(0)
		for i, l := range g.lines {
			if len(l) > maxLine || !strings.HasPrefix(want[i], l) || len(l) != min(len(want[i]), maxLine) {
				t.Fatalf("line %d: %q for %q", i, l, want[i])
			}
			if g.next[i] <= prev {
				t.Fatalf("offsets %v", g.next)
			}
			prev = g.next[i]
		}
		if len(g.next) > 0 && g.next[len(g.next)-1] != int64(len(data)) {
			t.Fatalf("last offset %d, file %d bytes", g.next[len(g.next)-1], len(data))
		}
		if len(g.next) > 1 {
			var r got
			Follow(context.Background(), Path(dir), g.next[0], FollowOptions{MaxLine: maxLine, Ended: closed()}, r.fn)
			if fmt.Sprint(r.lines) != fmt.Sprint(g.lines[1:]) {
				t.Fatalf("resumed: %q, want %q", r.lines, g.lines[1:])
			}
		}
	})
}
