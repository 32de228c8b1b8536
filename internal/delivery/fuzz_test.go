package delivery

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// The keep parses frames and the manifest from the client; the client
// parses frames from the keep and the hello from the host. All are
// untrusted bytes.

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{FrameStdout, 0, 0, 0, 3, 'a', 'b', 'c'})
	f.Add([]byte{FrameExit, 0, 0, 0, 0})
	f.Add([]byte{FrameWasm, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		typ, p, err := ReadFrame(bytes.NewReader(b), MaxFrame)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := WriteFrame(&out, typ, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), b[:5+len(p)]) {
			t.Fatalf("frame does not round-trip")
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	good, _ := json.Marshal(Manifest{Digest: "sha256:" + string(bytes.Repeat([]byte("a"), 64)), WasmSize: 10, ConfigSize: -1,
		Args: []string{"x"}, Secrets: map[string]string{"K": "v"}})
	f.Add(good)
	f.Add([]byte(`{"digest":"sha256:00","wasm_size":1,"config_size":-1}`))
	f.Add([]byte(`{"digest":1}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`{"digest":"sha256:` + strings.Repeat("a", 64) + `","wasm_size":1,"config_size":-1,"secret_service":{"url":"https://a:1","roots_pem":"QQ=="}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		if m.WasmSize <= 0 || m.WasmSize > MaxWasmSize || len(m.Secrets) > MaxSecrets {
			t.Fatalf("accepted manifest out of bounds: %+v", m)
		}
	})
}

func FuzzParseHello(f *testing.F) {
	f.Add([]byte(`{"evidence":"pQFkbm9uZQL2BEEBBUEBBnhHc2hhMjU2OjAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMA==","csr":"AQ=="}`))
	f.Add([]byte(`{"evidence":"","csr":""}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, env, err := ParseHello(b)
		if err != nil {
			return
		}
		if h == nil || env == nil || len(h.CSR) == 0 {
			t.Fatal("accepted hello without its parts")
		}
	})
}
