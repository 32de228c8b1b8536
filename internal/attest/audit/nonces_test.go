package audit

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit/audittest"
)

// testLedger checks a ledger: a nonce serves once, the bound refuses new
// entries (not replays of old ones as new), and expiry makes room.
func testLedger(t *testing.T, l NonceLedger) {
	ctx := context.Background()
	now := time.Unix(1_900_000_000, 0)
	exp := now.Add(time.Minute)
	const max = 3
	for i := range max {
		if err := l.UseNonce(ctx, []byte{byte(i)}, exp, now, max); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	if err := l.UseNonce(ctx, []byte{0}, exp, now, max); !errors.Is(err, ErrNonceUsed) && !errors.Is(err, ErrNoncesFull) {
		t.Errorf("replay: %v, want a refusal", err)
	}
	if err := l.UseNonce(ctx, []byte{9}, exp, now.Add(2*time.Second), max); !errors.Is(err, ErrNoncesFull) {
		t.Errorf("beyond the bound: %v, want ErrNoncesFull", err)
	}
	// Once the entries expire, they make room; a replay of an expired id is
	// the nonce check's business (the seal carries the time), not the ledger's.
	later := exp.Add(time.Second)
	if err := l.UseNonce(ctx, []byte{9}, later.Add(time.Minute), later, max); err != nil {
		t.Errorf("after expiry: %v", err)
	}
	if err := l.UseNonce(ctx, []byte{9}, later.Add(time.Minute), later, max); !errors.Is(err, ErrNonceUsed) {
		t.Errorf("replay after expiry of others: %v, want ErrNonceUsed", err)
	}
}

func TestLedgerMemory(t *testing.T) { testLedger(t, &MemoryNonces{}) }

func TestLedgerSQLite(t *testing.T) {
	l, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	testLedger(t, l)
}

func TestLedgerPostgres(t *testing.T) {
	dsn := audittest.PostgresDSN(t)
	l, err := Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	testLedger(t, l)
}

// Two connections (two replicas) racing to use the same nonces: each is
// accepted exactly once.
func TestLedgerPostgresRace(t *testing.T) {
	dsn := audittest.PostgresDSN(t)
	ctx := context.Background()
	var logs [2]*DB
	for i := range logs {
		l, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		logs[i] = l
	}
	now := time.Now()
	const n = 50
	var mu sync.Mutex
	wins := map[string]int{}
	var wg sync.WaitGroup
	for _, l := range logs {
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range n {
					id := []byte(fmt.Sprint("nonce-", (i+g)%n))
					err := l.UseNonce(ctx, id, now.Add(time.Minute), now, 1000)
					switch {
					case err == nil:
						mu.Lock()
						wins[string(id)]++
						mu.Unlock()
					case !errors.Is(err, ErrNonceUsed):
						t.Error(err)
					}
				}
			}()
		}
	}
	wg.Wait()
	if len(wins) != n {
		t.Errorf("%d nonces accepted, want %d", len(wins), n)
	}
	for id, w := range wins {
		if w != 1 {
			t.Errorf("%s accepted %d times", id, w)
		}
	}
	if c, err := logs[0].UsedNonces(ctx, now); err != nil || c != n {
		t.Errorf("UsedNonces = %d, %v; want %d", c, err, n)
	}
}
