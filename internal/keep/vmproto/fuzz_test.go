package vmproto

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"
)

// FuzzAccept feeds the guest arbitrary host bytes: no panic, and a
// request is returned only when it passes Check.
func FuzzAccept(f *testing.F) {
	good, _ := json.Marshal(testRequest())
	f.Add(frame(FrameLaunch, good))
	f.Add(frame(FrameLaunch, []byte(`{"backend":"sim-snp","sim_ca":"cGVt"}`)))
	f.Add([]byte{FrameLaunch, 0xff, 0xff, 0xff, 0xff})
	f.Add(frame(FrameData, []byte("x")))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, req, err := Accept(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), io.Discard})
		if err == nil && req.Check() != nil {
			t.Fatal("accepted an invalid request")
		}
	})
}

// FuzzHandshake feeds the host arbitrary guest bytes after the version:
// no panic, no hang, and Wait always returns.
func FuzzHandshake(f *testing.F) {
	f.Add(append(frame(FrameHello, []byte("{}")), frame(FrameExit, []byte(`{"state":"exited","exit_code":0}`))...))
	f.Add(frame(FrameExit, []byte(`{"state":"failed","reason":"x"}`)))
	f.Add(append(frame(FrameHello, []byte("{}")), frame(FrameData, []byte("abc"))...))
	f.Add([]byte{FrameHello, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := io.MultiReader(bytes.NewReader(frame(FrameVersion, []byte(Version))), bytes.NewReader(in))
		conn := &fakeConn{Reader: r}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		h, err := Handshake(ctx, conn, testRequest())
		if err != nil {
			return
		}
		go io.Copy(io.Discard, h.Stream())
		h.Wait()
		for range h.Events() {
		}
	})
}

type fakeConn struct{ io.Reader }

func (*fakeConn) Write(p []byte) (int, error) { return len(p), nil }
func (*fakeConn) Close() error                { return nil }
