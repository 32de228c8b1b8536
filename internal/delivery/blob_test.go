package delivery

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadBlob(t *testing.T) {
	frames := func(fs ...[]byte) *bytes.Reader {
		var b bytes.Buffer
		for _, f := range fs {
			b.Write(f)
		}
		return bytes.NewReader(b.Bytes())
	}
	frame := func(typ byte, p []byte) []byte {
		var b bytes.Buffer
		if err := WriteFrame(&b, typ, p); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	big := bytes.Repeat([]byte("castellan"), MaxFrame/9*2+5) // three frames
	var split []byte
	for off := 0; off < len(big); off += MaxFrame {
		split = append(split, frame(FrameWasm, big[off:min(off+MaxFrame, len(big))])...)
	}
	t.Run("frames of one blob", func(t *testing.T) {
		b, sum, err := readBlob(frames(split), FrameWasm, int64(len(big)), "module")
		if err != nil || !bytes.Equal(b, big) || sum != sha256.Sum256(big) {
			t.Fatalf("got %d bytes, sum ok %v, %v", len(b), sum == sha256.Sum256(big), err)
		}
	})
	t.Run("empty blob", func(t *testing.T) {
		b, sum, err := readBlob(frames(frame(FrameConfig, nil)), FrameConfig, 0, "config")
		if err != nil || len(b) != 0 || sum != sha256.Sum256(nil) {
			t.Fatalf("got %q, %v", b, err)
		}
	})
	for _, c := range []struct {
		name, want string
		r          io.Reader
		size       int64
		what       string
	}{
		{"another frame type inside", "frame type 3 inside the module", frames(frame(FrameWasm, []byte("ab")), frame(FrameConfig, []byte("cd"))), 4, "module"},
		{"longer than the manifest", "longer than the manifest's 3 bytes", frames(frame(FrameWasm, []byte("abcd"))), 3, "module"},
		{"an empty frame inside", "empty frame inside the module", frames(frame(FrameWasm, []byte("ab")), frame(FrameWasm, nil)), 4, "module"},
		{"bytes in an empty blob", "longer than the manifest's 0 bytes", frames(frame(FrameWasm, []byte("a"))), 0, "module"},
		{"cut short", "unexpected EOF", bytes.NewReader(frame(FrameWasm, []byte("abcd"))[:7]), 4, "module"},
		{"ends before the blob", "unexpected EOF", frames(frame(FrameWasm, []byte("ab"))), 4, "module"},
		{"a frame above the limit", "more than", bytes.NewReader([]byte{FrameWasm, 0xff, 0xff, 0xff, 0xff}), 1 << 30, "module"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := readBlob(c.r, FrameWasm, c.size, c.what)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
		})
	}
	_, _, err := readBlob(frames(frame(FrameConfig, []byte("x"))), FrameWasm, 1, "module")
	if !errors.Is(err, ErrRefused) {
		t.Fatalf("a frame of another type: %v is not a refusal", err)
	}
}
