package runtime

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

type result struct {
	code           int
	err            error
	stdout, stderr string
}

func readWasm(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// run runs a module with o, filling in the module and capturing output.
func run(t testing.TB, wasmPath string, o Options) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	o.Wasm = readWasm(t, wasmPath)
	if o.Name == "" {
		o.Name = "app.wasm"
	}
	if o.CacheDir == "" {
		o.CacheDir = testCache
	}
	if o.Stdout == nil {
		o.Stdout = &stdout
	}
	if o.Stderr == nil {
		o.Stderr = &stderr
	}
	code, err := Run(context.Background(), o)
	return result{code, err, stdout.String(), stderr.String()}
}

func TestHelloArgsEnvExit(t *testing.T) {
	cfg := config.Default()
	cfg.Args = []string{"from-config"}
	cfg.Env = map[string]string{"B": "2", "A": "1"}
	r := run(t, fixtures.Go(t, "hello"), Options{
		Config: cfg,
		Args:   []string{"from-cli"},
		Env:    map[string]string{"EXIT_CODE": "7"},
	})
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.code != 7 {
		t.Errorf("exit code %d, want 7", r.code)
	}
	want := "hello from a keep\narg[0]=main.wasm\narg[1]=from-config\narg[2]=from-cli\n" +
		"env FD_COUNT=3\nenv FD_NAMES=stdin:stdout:stderr\nenv A=1\nenv B=2\nenv EXIT_CODE=7\n"
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
}

func TestHelloC(t *testing.T) {
	r := run(t, fixtures.C(t, "hello"), Options{Args: []string{"x"}})
	if r.err != nil || r.code != 0 {
		t.Fatalf("code %d, err %v", r.code, r.err)
	}
	if !strings.Contains(r.stdout, "arg[1]=x") {
		t.Errorf("stdout %q", r.stdout)
	}
}

func TestProgramConcurrentRuns(t *testing.T) {
	p, err := Compile(context.Background(), "hello.wasm", readWasm(t, fixtures.Go(t, "hello")), testCache, false)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(context.Background())
	const runs = 4
	outs := make([]bytes.Buffer, runs)
	codes := make([]int, runs)
	errs := make([]error, runs)
	done := make(chan int)
	for i := 0; i < runs; i++ {
		go func() {
			codes[i], errs[i] = p.Run(context.Background(), Options{Stdout: &outs[i], Env: map[string]string{"EXIT_CODE": strconv.Itoa(i + 10)}})
			done <- i
		}()
	}
	for i := 0; i < runs; i++ {
		<-done
	}
	for i := 0; i < runs; i++ {
		if errs[i] != nil || codes[i] != i+10 || !strings.Contains(outs[i].String(), "env EXIT_CODE="+strconv.Itoa(i+10)+"\n") {
			t.Errorf("run %d: code %d, err %v, stdout %q", i, codes[i], errs[i], outs[i].String())
		}
	}
}

func TestStdin(t *testing.T) {
	r := run(t, fixtures.Go(t, "stdin"), Options{Stdin: strings.NewReader("one\ntwo\n")})
	if r.err != nil || r.code != 0 || r.stdout != "ONE\nTWO\nbytes: 8\n" {
		t.Fatalf("code %d, err %v, stdout %q, stderr %q", r.code, r.err, r.stdout, r.stderr)
	}
	// No stdin reader: end of file at once.
	r = run(t, fixtures.Go(t, "stdin"), Options{})
	if r.err != nil || r.stdout != "bytes: 0\n" {
		t.Fatalf("without stdin: %v %q", r.err, r.stdout)
	}
}

func TestCancelWhileReadingStdin(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	out := &watchWriter{want: "FIRST", seen: make(chan struct{})}
	go func() {
		_, err := Run(ctx, Options{Name: "stdin.wasm", Wasm: readWasm(t, fixtures.Go(t, "stdin")), Stdin: pr, Stdout: out, CacheDir: testCache})
		done <- err
	}()
	pw.Write([]byte("first\n"))
	// The guest has read and echoed the line; it now waits for more.
	select {
	case <-out.seen:
	case err := <-done:
		t.Fatalf("ended early: %v", err)
	}
	cancel()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("err %v", err)
	}
}

// watchWriter closes seen once what was written contains want.
type watchWriter struct {
	syncBuffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *watchWriter) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return n, err
}

func TestEnvWithoutConfig(t *testing.T) {
	// A workload run without a config gets exactly the variables it was
	// given: no FD_COUNT or FD_NAMES, which only an Enarx.toml brings.
	r := run(t, fixtures.Go(t, "hello"), Options{Env: map[string]string{"B": "2", "A": "1"}})
	if r.err != nil || r.code != 0 {
		t.Fatalf("code %d, err %v", r.code, r.err)
	}
	want := "hello from a keep\narg[0]=main.wasm\nenv A=1\nenv B=2\n"
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
}
