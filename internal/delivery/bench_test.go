package delivery

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/workload"
)

// padded returns the C hello with a custom section that brings it to
// size bytes: a large module that runs in no time, so that a delivery's
// time is its transfer and checks.
func padded(b *testing.B, size int) *workload.Artifact {
	base := load(b, "c", "hello", nil).Wasm
	name := "pad"
	n := size - len(base) - 1 - 5 - 1 - len(name)
	if n < 0 {
		b.Fatalf("the C hello is larger than %d bytes", size)
	}
	body := n + 1 + len(name)
	sec := []byte{0, byte(body) | 0x80, byte(body>>7) | 0x80, byte(body>>14) | 0x80, byte(body>>21) | 0x80, byte(body >> 28), byte(len(name))}
	sec = append(sec, name...)
	sec = append(sec, make([]byte, n)...)
	art, err := workload.New(append(append([]byte(nil), base...), sec...), []byte(stdio))
	if err != nil {
		b.Fatal(err)
	}
	return art
}

// BenchmarkDeliver measures a confidential delivery over loopback TCP,
// from the client's first TLS byte to the keep's word that the package
// arrived and checked out (before the workload's first instruction), for
// modules of a few sizes.
//
//	go test -run XXX -bench Deliver ./internal/delivery
func BenchmarkDeliver(b *testing.B) {
	for _, mb := range []int{1, 3, 16} {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			art := padded(b, mb<<20)
			var total time.Duration
			b.SetBytes(int64(len(art.Wasm)))
			for b.Loop() {
				k, sess, v := pair(b, art.Digest.String())
				var t0, started time.Time
				d := Delivery{Artifact: art, Stdout: io.Discard, Stderr: io.Discard, OnStarted: func() { started = time.Now() }}
				t0 = time.Now()
				res, err, _, kerr := runWith(b, k, sess, v, d, ServeOptions{})
				if err != nil || kerr != nil || res.ExitCode != 0 {
					b.Fatalf("deliver: %v; keep: %v; %+v", err, kerr, res)
				}
				total += started.Sub(t0)
			}
			b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms-to-started")
		})
	}
}
