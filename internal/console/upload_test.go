package console

import (
	"bytes"
	"mime/multipart"
	"net"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/config"
)

// FuzzCheckConfig: whatever an uploaded config says, one that passes
// lends nothing of the host: no folder, no outgoing connection, no
// attestation service, no listener off loopback.
func FuzzCheckConfig(f *testing.F) {
	for _, s := range []string{
		"",
		"args = [\"a\"]\n[env]\nK = \"v\"\n",
		"[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = \"tcp\"\naddr = \"127.0.0.1\"\nport = 8080\n",
		"[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = \"tcp\"\naddr = \"::ffff:127.0.0.1\"\nport = 8080\n",
		"[[files]]\nkind = \"listen\"\nname = \"web\"\nprot = \"tls\"\nhost = \"0.0.0.0\"\nport = 8443\n",
		"[[files]]\nkind = \"dir\"\nname = \"/data\"\npath = \"/\"\n",
		"[[files]]\nkind = \"connect\"\nhost = \"127.0.0.1\"\nprot = \"tcp\"\nport = 22\n",
		"steward = \"https://x\"\n",
		"replicas = 256\n",
		"replicas = \"auto\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := config.Parse("app.toml", b)
		if err != nil {
			return
		}
		if checkConfig(cfg, "app.toml") != nil {
			return
		}
		if cfg.Steward != "" {
			t.Fatalf("accepted steward %q", cfg.Steward)
		}
		if cfg.Instances() != 1 {
			t.Fatalf("accepted %d instances", cfg.Instances())
		}
		for _, fl := range cfg.Files {
			switch fl.Kind {
			case config.KindDir, config.KindConnect:
				t.Fatalf("accepted %s entry", fl.Kind)
			case config.KindListen:
				if ip := net.ParseIP(fl.Addr); ip == nil || !ip.IsLoopback() || fl.Port < 1024 {
					t.Fatalf("accepted listener on %s port %d", fl.Addr, fl.Port)
				}
			}
		}
	})
}

// FuzzReadStart: any request body either is refused or yields exactly one
// workload within the limits.
func FuzzReadStart(f *testing.F) {
	const boundary = "BOUNDARY"
	form := func(fields ...[2]string) []byte {
		var b bytes.Buffer
		mw := multipart.NewWriter(&b)
		mw.SetBoundary(boundary)
		for _, fl := range fields {
			if strings.HasSuffix(fl[0], "=file") {
				w, _ := mw.CreateFormFile(strings.TrimSuffix(fl[0], "=file"), "x.wasm")
				w.Write([]byte(fl[1]))
			} else {
				mw.WriteField(fl[0], fl[1])
			}
		}
		mw.Close()
		return b.Bytes()
	}
	f.Add(form([2]string{"example", "hello-go"}, [2]string{"backend", "nil"}))
	f.Add(form([2]string{"wasm=file", "\x00asm\x01\x00\x00\x00"}, [2]string{"config=file", "args = []"}, [2]string{"backend", "nil"}))
	f.Add(form([2]string{"wasm=file", strings.Repeat("x", 300)}))
	f.Add([]byte("--BOUNDARY\r\nContent-Disposition: form-data; name=\"wasm\"\r\n\r\n"))
	s := &Server{o: Options{MaxUpload: 256}}
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/api/runs", bytes.NewReader(body))
		r.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
		req, err := s.readStart(httptest.NewRecorder(), r)
		if err != nil {
			if _, ok := err.(*badRequest); !ok {
				t.Fatalf("error of another kind: %T %v", err, err)
			}
			return
		}
		if (req.example == "") == (req.wasm == nil) {
			t.Fatalf("not exactly one workload: example %q, %d bytes of wasm", req.example, len(req.wasm))
		}
		if int64(len(req.wasm)) > s.o.MaxUpload || len(req.config) > maxConfigSize || len(req.example) > maxFieldSize || len(req.backend) > maxFieldSize {
			t.Fatalf("over a limit: %d %d %d %d", len(req.wasm), len(req.config), len(req.example), len(req.backend))
		}
		if req.wasm != nil && (len(req.wasm) == 0 || req.wasmName == "" || strings.ContainsAny(req.wasmName, "/\n\x00")) {
			t.Fatalf("bad module %q of %d bytes", req.wasmName, len(req.wasm))
		}
	})
}
