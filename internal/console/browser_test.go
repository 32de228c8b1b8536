package console_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/castellan-dev/castellan/internal/console"
)

// chromium finds the browser: $CASTELLAN_CHROMIUM, else Debian's chromium.
// Without one the test is skipped, unless CI is set: then it fails.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("CASTELLAN_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no headless browser: install Debian's chromium (apt-get install -y chromium) or set CASTELLAN_CHROMIUM"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// artifacts is the folder for the test's screenshots: $CASTELLAN_ARTIFACTS,
// else a new temporary folder that is kept.
func artifacts(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("CASTELLAN_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "castellan-console-artifacts-"); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBrowser drives the page in a real headless Chromium: run the Go
// example and see its output and the certificate panel with its digest,
// stop a long-running example with the keyboard, upload a broken module
// and see the error. Each state is saved as a screenshot.
func TestBrowser(t *testing.T) {
	exe := chromium(t)
	art := artifacts(t)
	tc := newConsole(t, console.Options{TimeLimit: 2 * time.Minute, MaxKeeps: 1})

	// Build the examples first: on a fresh machine the first Go build for
	// wasip1 compiles the standard library, which is not the page's doing.
	for _, id := range []string{"hello-go", "ticker-go", "http-go"} {
		if _, err := tc.ExamplePath(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1000),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelB := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelB()
	ctx, cancelT := context.WithTimeout(ctx, 10*time.Minute)
	defer cancelT()

	shotIn := func(ctx context.Context, name string) {
		t.Helper()
		buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(art, name)
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	doIn := func(ctx context.Context, step string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			shotIn(ctx, "failed-"+strings.ReplaceAll(step, " ", "-")+".png")
			t.Fatalf("%s: %v", step, err)
		}
	}
	textIn := func(ctx context.Context, sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	shot := func(name string) { t.Helper(); shotIn(ctx, name) }
	do := func(step string, actions ...chromedp.Action[chromedp.Void]) { t.Helper(); doIn(ctx, step, actions...) }
	text := func(sel string) string { t.Helper(); return textIn(ctx, sel) }
	waitFor := func(js string) chromedp.Action[chromedp.Void] {
		return chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(2*time.Minute))
	}
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// 1. The page loads with the examples and the backends.
	do("open the page",
		chromedp.Navigate(tc.URL),
		chromedp.WaitVisible(css("#wl-hello-go")),
		waitFor(`document.querySelectorAll('#backend option').length > 0`),
	)
	shot("1-page.png")
	// Every control has a label; every button says what it does.
	labelled, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`[...document.querySelectorAll('input, select')].every(e => e.labels && e.labels.length > 0 && e.labels[0].textContent.trim() !== '') &&
		[...document.querySelectorAll('button')].every(b => b.textContent.trim() !== '')`))
	if err != nil || !labelled {
		t.Errorf("a control without a label: %v", err)
	}

	// 2. Run the Go hello example on the simulated SNP backend, by keyboard.
	do("run hello",
		chromedp.Focus(css("#wl-hello-go")),
		chromedp.KeyEvent(" "),
		chromedp.SetValue(css("#backend"), "sim-snp"),
		chromedp.Focus(css("#run-button")),
		chromedp.KeyEvent(kb.Enter),
		waitFor(`document.getElementById('stdout').textContent.includes('Hello, world, from a Castellan keep!')`),
		waitFor(`document.getElementById('stderr').textContent.includes('This line went to standard error.')`),
		waitFor(`document.getElementById('status').dataset.state === 'exited'`),
	)
	shot("2-hello-output.png")

	// 3. The certificate panel shows the workload digest of what ran.
	do("find the proof", chromedp.WaitVisible(css("#proof-digest")), chromedp.ScrollIntoView(css("#proof-heading")))
	digest, verdict, status := text("#proof-digest"), text("#verdict"), text("#status")
	hello, err := tc.ExamplePath(ctx, "hello-go")
	if err != nil {
		t.Fatal(err)
	}
	if want := digestOf(t, hello, nil); digest != want {
		t.Errorf("digest on the page %q, want %q", digest, want)
	}
	if !strings.Contains(verdict, "Insecure: simulated hardware") {
		t.Errorf("verdict: %q", verdict)
	}
	// The keep ran through the console's own host agent, with the
	// workload delivered after the console checked the evidence.
	if d, c := text("#proof-delivery"), text("#proof-verified-by"); !strings.Contains(d, "the host agent in this process") ||
		!strings.Contains(d, "pinned to the attested key") || !strings.Contains(c, "simulation root") {
		t.Errorf("delivery %q, checked by %q", d, c)
	}
	if w := text("#keeps-where"); !strings.Contains(w, "Keeps run through the host agent in this process") {
		t.Errorf("where keeps run: %q", w)
	}
	if !strings.Contains(status, "Finished") || !strings.Contains(status, "status 0") {
		t.Errorf("status: %q", status)
	}
	shot("3-proof.png")

	// 4. A long-running example, stopped from the keyboard.
	do("run the ticker",
		chromedp.ScrollIntoView(css("h1")),
		chromedp.Click(css("#wl-ticker-go")),
		chromedp.SetValue(css("#backend"), "nil"),
		chromedp.Click(css("#run-button")),
		waitFor(`document.getElementById('stdout').textContent.includes('tick 2')`),
		waitFor(`document.getElementById('countdown').textContent.startsWith('Time left: ')`),
	)
	if c := text("#countdown"); !strings.HasSuffix(c, " s of 120 s") {
		t.Errorf("countdown: %q", c)
	}
	shot("4-ticker-running.png")

	// The same visitor in a second tab follows the running keep.
	tab, cancelTab := chromedp.NewContext(ctx)
	doIn(tab, "open a second tab",
		chromedp.Navigate(tc.URL),
		waitFor(`document.getElementById('status').dataset.state === 'running'`),
		waitFor(`document.getElementById('stdout').textContent.includes('tick')`),
		waitFor(`document.getElementById('wl-ticker-go').checked && document.getElementById('backend').value === 'nil'`),
	)
	shotIn(tab, "4b-second-tab-follows.png")
	cancelTab()

	// Another visitor (its own browser context, so its own cookie) is over
	// the console's cap of one running keep, and the page says so.
	other, cancelOther := chromedp.NewContext(ctx, chromedp.WithNewBrowserContext())
	doIn(other, "run as another visitor",
		chromedp.Navigate(tc.URL),
		chromedp.WaitVisible(css("#wl-hello-go")),
		chromedp.Click(css("#wl-hello-go")),
		chromedp.Click(css("#run-button")),
		chromedp.WaitVisible(css("#error")),
	)
	if e := textIn(other, "#error"); !strings.Contains(e, "Limit reached: the console is busy") {
		t.Errorf("error for another visitor: %q", e)
	}
	shotIn(other, "4c-other-visitor-over-the-limit.png")
	cancelOther()

	do("stop with the keyboard",
		chromedp.Focus(css("#stop-button")),
		chromedp.KeyEvent(kb.Enter),
		waitFor(`document.getElementById('status').dataset.state === 'stopped'`),
	)
	if s := text("#status"); !strings.Contains(s, "Stopped") || !strings.Contains(s, "Stopped by you.") {
		t.Errorf("status after stop: %q", s)
	}
	shot("5-stopped.png")

	// 5. A broken module is refused with a clear error.
	broken := filepath.Join(t.TempDir(), "broken.wasm")
	if err := os.WriteFile(broken, []byte("this is not WebAssembly\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	do("upload a broken module",
		chromedp.Click(css("#wl-upload")),
		chromedp.WaitVisible(css("#wasm-file")),
		chromedp.SetUploadFiles(css("#wasm-file"), []string{broken}),
		chromedp.Click(css("#run-button")),
		chromedp.WaitVisible(css("#error")),
	)
	if e := text("#error"); !strings.Contains(e, "broken.wasm: not a WebAssembly module (bad magic number)") {
		t.Errorf("error on the page: %q", e)
	}
	if s := text("#status"); !strings.Contains(s, "Not started") {
		t.Errorf("status after the refusal: %q", s)
	}
	if out := text("#stdout"); out != "" {
		t.Errorf("the previous run's output is still shown: %q", out)
	}
	shot("6-broken-upload.png")

	// 6. The HTTP server example: the page shows where to reach it.
	do("run the HTTP server",
		chromedp.Click(css("#wl-http-go")),
		chromedp.Click(css("#run-button")),
		waitFor(`document.getElementById('listen').textContent.includes('is listening on this machine')`),
	)
	href, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#listen a').href`))
	if err != nil || !strings.HasPrefix(href, "http://127.0.0.1:") {
		t.Fatalf("link to the server: %q %v", href, err)
	}
	resp, err := http.Get(href + "from-the-test")
	if err != nil {
		t.Fatalf("GET %s: %v", href, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "You asked for /from-the-test") {
		t.Errorf("GET %s: %q", href, body)
	}
	do("see the request in the output", waitFor(`document.getElementById('stdout').textContent.includes('GET /from-the-test')`))
	shot("7-http-server.png")
	do("stop the server",
		chromedp.Click(css("#stop-button")),
		waitFor(`document.getElementById('status').dataset.state === 'stopped'`),
	)
}
