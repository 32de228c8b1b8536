package host

import (
	"context"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/engine"
	"github.com/castellan-dev/castellan/internal/fixtures"
	"github.com/castellan-dev/castellan/internal/keep"
)

func benchHarness(b *testing.B, mods ...func(*Config)) *harness {
	b.Helper()
	return newHarness(b, mods...)
}

// BenchmarkCreateKeep measures keeps created per second: create request
// to the keep's published evidence (process start, key, evidence), then a
// stop. Reports keeps/s for the nil and sim-snp backends.
func BenchmarkCreateKeep(b *testing.B) {
	for _, backend := range []string{"nil", "sim-snp"} {
		b.Run(backend, func(b *testing.B) {
			h := benchHarness(b)
			sess, _ := delivery.NewSession()
			ctx := context.Background()
			var created time.Duration
			for b.Loop() {
				t0 := time.Now()
				k, err := h.client.Create(ctx, &CreateRequest{Backend: backend, Nonce: []byte("bench"), ClientKey: sess.KeyHash,
					Digest: "sha256:" + strings.Repeat("0", 64)})
				created += time.Since(t0)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := h.client.Stop(ctx, k.ID); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/created.Seconds(), "keeps/s")
		})
	}
}

// BenchmarkCreateKeepParallel measures keeps created per second with
// eight clients at once.
func BenchmarkCreateKeepParallel(b *testing.B) {
	h := benchHarness(b, func(c *Config) { c.MaxKeeps = 1000 })
	sess, _ := delivery.NewSession()
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(4) // 4 x GOMAXPROCS clients
	t0 := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k, err := h.client.Create(ctx, &CreateRequest{Backend: "nil", Nonce: []byte("bench"), ClientKey: sess.KeyHash,
				Digest: "sha256:" + strings.Repeat("0", 64)})
			if err != nil {
				b.Error(err)
				return
			}
			n.Add(1)
			h.client.Stop(ctx, k.ID)
		}
	})
	b.ReportMetric(float64(n.Load())/time.Since(t0).Seconds(), "keeps/s")
}

// BenchmarkDeployFirstOutput measures the time from the start of a
// confidential deployment (nonce, create, evidence, verification, attach,
// TLS, package) to the workload's first byte of output. "warm-cache" is a
// nil-backend keep with the agent's compilation cache filled by a first
// deployment; "sim-snp" compiles in the keep every time (TEE keeps never
// use a host-side cache).
func BenchmarkDeployFirstOutput(b *testing.B) {
	for _, tc := range []struct {
		name, backend, fixture string
		cache                  bool
	}{
		{"go-hello/warm-cache", "nil", "hello", true},
		{"go-hello/sim-snp-no-cache", "sim-snp", "hello", false},
		{"c-hello/sim-snp-no-cache", "sim-snp", "c-hello", false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cacheDir := b.TempDir()
			h := benchHarness(b, func(c *Config) {
				if tc.cache {
					c.KeepCacheDir = cacheDir
				}
			})
			var wasm string
			if tc.fixture == "c-hello" {
				wasm = fixtures.C(b, "hello")
			} else {
				wasm = fixtures.Go(b, tc.fixture)
			}
			art := artifact(b, wasm, []byte(stdio))
			v := &delivery.InsecureVerifier{SimRoots: simRoots(b)}
			ctx := context.Background()
			deploy := func() time.Duration {
				out, first := firstOutput()
				t0 := time.Now()
				_, res, err := h.client.Deploy(ctx, DeployOptions{Backend: tc.backend, Verifier: v,
					Delivery: delivery.Delivery{Artifact: art, Stdout: out}})
				if err != nil || res.ExitCode != 0 {
					b.Fatalf("deploy: %v %+v", err, res)
				}
				return (<-first).Sub(t0)
			}
			deploy() // fills the cache (when there is one) and the page cache
			var total time.Duration
			for b.Loop() {
				total += deploy()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/first-output")
		})
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// firstOutput returns a writer that discards what it gets and a channel
// that receives the time of its first write.
func firstOutput() (io.Writer, <-chan time.Time) {
	first := make(chan time.Time, 1)
	return writerFunc(func(p []byte) (int, error) {
		select {
		case first <- time.Now():
		default:
		}
		return len(p), nil
	}), first
}

// BenchmarkStartCached measures how fast a keep of the agent starts a
// module it has compiled before (issue 11: "start to the workload's first
// instruction for a cached module inside the agent"), on each engine built
// into the test binary (wasmtime with -tags wasmtime). The keeps are
// nil-backend process keeps with the agent's compilation cache, filled by a
// first deployment; the modules' first instruction of their own writes to
// stdout (the C hello; the Go hello after its runtime's start), so the
// first byte of output at the client marks the guest's start. Two agents
// run interleaved, deployment by deployment: one starts a keep process per
// keep (cold), the other keeps two started ahead (warm, Config.WarmKeeps;
// between deployments the benchmark waits until both pools are idle, as
// between a host's requests); a third, like the cold one, gets the same
// module in a new package each time, so that its keeps find the compiled
// code in the cache but cannot load it ahead. Metrics, medians:
//
//   - ms/cold-delivery, ms/warm-delivery: from the first byte of the
//     delivery the agent relays to the keep (the client's TLS hello) to
//     that first output byte: the TLS handshake, the package, its digest,
//     the compiled module (in memory when the keep loaded it ahead),
//     instantiation, _start;
//   - ms/unknown-pkg-delivery: the same for the third agent;
//   - ms/cold-deploy, ms/warm-deploy: the whole deployment, from the
//     client's first request (nonce, create, keep process start, evidence,
//     verification, attach, then the above).
func BenchmarkStartCached(b *testing.B) {
	engines := []string{engine.NameWazero}
	if engine.Available(engine.NameWasmtime) == nil {
		engines = append(engines, engine.NameWasmtime)
	}
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for _, eng := range engines {
		for _, fixture := range []string{"c-hello", "go-hello"} {
			b.Run(eng+"/"+fixture, func(b *testing.B) {
				var wasm string
				if fixture == "c-hello" {
					wasm = fixtures.C(b, "hello")
				} else {
					wasm = fixtures.Go(b, "hello")
				}
				art := artifact(b, wasm, []byte(stdio))
				cacheDir := b.TempDir()
				type agent struct {
					h         *harness
					pool      *keep.Process
					delivered atomic.Int64 // unix ns of the first relayed byte to the keep
					delivery  []time.Duration
					deploy    []time.Duration
				}
				newAgent := func(warm int) *agent {
					a := &agent{pool: &keep.Process{Command: []string{exe, keepArg}, CacheDir: cacheDir, Engine: eng, Warm: warm}}
					a.h = benchHarness(b, func(c *Config) {
						c.Launcher = a.pool
						c.RelayTap = func(_ string, toKeep bool, _ []byte) {
							if toKeep {
								a.delivered.CompareAndSwap(0, time.Now().UnixNano())
							}
						}
					})
					for deadline := time.Now().Add(2 * time.Minute); len(a.pool.Waiting()) < warm; time.Sleep(5 * time.Millisecond) {
						if time.Now().After(deadline) {
							b.Fatal("the pool did not fill")
						}
					}
					return a
				}
				cold, warm, fresh := newAgent(0), newAgent(2), newAgent(0)
				ctx := context.Background()
				v := &delivery.InsecureVerifier{}
				n := 0
				run := func(a *agent, record bool) {
					art := art
					if a == fresh {
						// The same module in a package no keep ran before:
						// its compiled code is in the cache, but the keep
						// does not know it ahead.
						n++
						art = artifact(b, wasm, fmt.Appendf(nil, "env = { RUN = \"%d\" }\n%s", n, stdio))
					}
					out, first := firstOutput()
					a.delivered.Store(0)
					t0 := time.Now()
					k, res, err := a.h.client.Deploy(ctx, DeployOptions{Backend: "nil", Verifier: v,
						Delivery: delivery.Delivery{Artifact: art, Stdout: out}})
					if err != nil || res.ExitCode != 0 {
						b.Fatalf("deploy: %v %+v", err, res)
					}
					t1 := <-first
					if record {
						a.deploy = append(a.deploy, t1.Sub(t0))
						a.delivery = append(a.delivery, t1.Sub(time.Unix(0, a.delivered.Load())))
					}
					b.StopTimer()
					a.h.waitEnded(k.ID)
					for len(a.pool.Waiting()) < a.pool.Warm {
						time.Sleep(time.Millisecond)
					}
					b.StartTimer()
				}
				run(cold, false) // fills the compilation cache and the page cache
				run(warm, false)
				run(fresh, false)
				for b.Loop() {
					run(cold, true)
					run(warm, true)
					run(fresh, true)
				}
				med := func(ds []time.Duration) float64 {
					ds = slices.Clone(ds)
					slices.Sort(ds)
					return float64(ds[len(ds)/2].Microseconds()) / 1000
				}
				b.ReportMetric(med(cold.delivery), "ms/cold-delivery")
				b.ReportMetric(med(warm.delivery), "ms/warm-delivery")
				b.ReportMetric(med(cold.deploy), "ms/cold-deploy")
				b.ReportMetric(med(warm.deploy), "ms/warm-deploy")
				b.ReportMetric(med(fresh.delivery), "ms/unknown-pkg-delivery")
			})
		}
	}
}
