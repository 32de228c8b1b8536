package service

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit"
	"github.com/castellan-dev/castellan/internal/attest/audit/audittest"
	"github.com/castellan-dev/castellan/internal/attest/policy"
)

// replicas returns two services as two `attest serve` replicas would be:
// the same policy files (each with its own store), CA and nonce key, and
// each its own connection pool to one PostgreSQL database.
func replicas(t *testing.T) (a, b *harness) {
	dsn := audittest.PostgresDSN(t)
	a = newHarness(t)
	b = new(harness)
	*b = *a
	for _, h := range []*harness{a, b} {
		var err error
		if h.store, err = policy.Open(h.policyFile, h.measFile); err != nil {
			t.Fatal(err)
		}
		if h.log, err = audit.Open(context.Background(), dsn); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.log.Close() })
		h.svc, err = New(Config{Policy: h.store, CA: h.ca, Audit: h.log, UsedNonces: h.log, NonceKey: h.nonceKey,
			Now: func() time.Time { return h.now }})
		if err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// Issue 10, replicas: a nonce issued by one replica is redeemed at the other
// exactly once; a replay at either is refused; the audit log is one table.
func TestReplicasShareNonces(t *testing.T) {
	a, b := replicas(t)
	n := a.challenge()
	b.mustIssue(keepReq{nonce: n})
	for _, h := range []*harness{a, b} {
		e := h.mustRefuse(h.body(keepReq{nonce: n}), CheckNonce)
		if !strings.Contains(e.Error, "already used") {
			t.Errorf("replay: %q", e.Error)
		}
	}
	// Both replicas' decisions are in the one table, seen from either.
	recs, err := a.log.Recent(context.Background(), 10)
	if err != nil || len(recs) != 3 || !recs[2].Accepted || recs[0].Accepted || recs[1].Accepted {
		t.Errorf("audit log seen from a: %+v, %v; want 1 issue then 2 refusals", recs, err)
	}
}

// The same nonce sent to both replicas at once, many times over: exactly
// one certificate per nonce.
func TestReplicasRace(t *testing.T) {
	a, b := replicas(t)
	const rounds = 8
	for range rounds {
		n := a.challenge()
		bodies := [2][]byte{a.body(keepReq{nonce: n}), b.body(keepReq{nonce: n})}
		var wg sync.WaitGroup
		codes := make([]int, 2)
		for i, h := range []*harness{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes[i] = h.do("POST", "/v1/certificate", bodies[i]).Code
			}()
		}
		wg.Wait()
		ok := 0
		for _, c := range codes {
			switch c {
			case http.StatusOK:
				ok++
			case http.StatusForbidden:
			default:
				t.Errorf("status %d", c)
			}
		}
		if ok != 1 {
			t.Fatalf("statuses %v: %d certificates for one nonce, want 1", codes, ok)
		}
	}
}

// Each replica watches the shared policy files (a ConfigMap mounted in
// each pod): an edit reaches both.
func TestReplicasReload(t *testing.T) {
	a, b := replicas(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, h := range []*harness{a, b} {
		go h.store.Watch(ctx, 10*time.Millisecond, nil)
	}
	a.mustIssue(keepReq{})
	b.mustIssue(keepReq{})
	a.writePolicy(otherDigest) // the workload is no longer allowed
	deadline := time.Now().Add(2 * time.Minute)
	for _, h := range []*harness{a, b} {
		for !strings.Contains(strings.Join(h.store.Current().Policy.Workloads, ","), otherDigest) {
			if time.Now().After(deadline) {
				t.Fatal("the policy edit did not reach a replica")
			}
			time.Sleep(10 * time.Millisecond)
		}
		h.mustRefuse(h.body(keepReq{}), "workload")
	}
}
