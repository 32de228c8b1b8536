package audit

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/attest/audit/audittest"
)

func testLog(t *testing.T, spec string) {
	ctx := context.Background()
	l, err := Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	recs := []Decision{
		{Time: now, Accepted: false, Check: "nonce", Reason: "nonce reused", Platform: "snp", Remote: "127.0.0.1:1"},
		{Time: now.Add(time.Second), Accepted: true, Platform: "tdx", Simulated: true, Measurement: "ab", TCB: "qe_svn=3",
			WorkloadDigest: "sha256:00", Package: "reg/x:1", Serial: "0f", NotAfter: now.Add(time.Hour), Remote: "127.0.0.1:2"},
	}
	for _, r := range recs {
		if err := l.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := l.Recent(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 2 {
		t.Fatalf("got %d records, want at least 2", len(got))
	}
	a, r := got[0], got[1]
	if !a.Accepted || a.Serial != "0f" || a.Platform != "tdx" || !a.Simulated || a.TCB != "qe_svn=3" || !a.NotAfter.Equal(now.Add(time.Hour)) || !a.Time.Equal(now.Add(time.Second)) {
		t.Errorf("accepted record read back as %+v", a)
	}
	if r.Accepted || r.Check != "nonce" || r.Reason != "nonce reused" || !r.NotAfter.IsZero() {
		t.Errorf("refused record read back as %+v", r)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopening applies no migration twice and keeps the records.
	l, err = Open(ctx, spec)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer l.Close()
	again, err := l.Recent(ctx, 10)
	if err != nil || len(again) != len(got) {
		t.Fatalf("after reopen: %d records, %v; want %d", len(again), err, len(got))
	}
}

// testPrune records decisions over three days and prunes those older
// than two, with more of them than one batch.
func testPrune(t *testing.T, spec string) {
	ctx := context.Background()
	l, err := Open(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	now := time.Now().UTC().Truncate(time.Microsecond)
	old, kept := pruneBatch+7, 3
	for i := range old + kept {
		at := now.Add(-72 * time.Hour).Add(time.Duration(i) * time.Millisecond)
		if i >= old {
			at = now.Add(-time.Duration(old+kept-i) * time.Hour)
		}
		if err := l.Record(ctx, Decision{Time: at, Check: "nonce", Reason: fmt.Sprint(i), Remote: "127.0.0.1:1"}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := l.Prune(ctx, now.Add(-48*time.Hour))
	if err != nil || n != int64(old) {
		t.Fatalf("pruned %d (%v), want %d", n, err, old)
	}
	left, err := l.Recent(ctx, old+kept)
	if err != nil || len(left) != kept {
		t.Fatalf("%d decisions left (%v), want %d", len(left), err, kept)
	}
	for _, r := range left {
		if r.Time.Before(now.Add(-48 * time.Hour)) {
			t.Errorf("a decision of %v was kept", r.Time)
		}
	}
	if n, err := l.Prune(ctx, now.Add(-48*time.Hour)); err != nil || n != 0 {
		t.Fatalf("pruning again: %d, %v; want 0", n, err)
	}
}

func TestPruneSQLite(t *testing.T) {
	testPrune(t, "sqlite:"+filepath.Join(t.TempDir(), "audit.db"))
}

func TestPrunePostgres(t *testing.T) {
	testPrune(t, audittest.PostgresDSN(t))
}

func TestSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "audit.db")
	testLog(t, "sqlite:"+path)
	var mode string
	l, err := Open(context.Background(), "sqlite:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
		t.Errorf("journal_mode = %q, %v; want wal", mode, err)
	}
}

// TestPostgres runs against the server named by CASTELLAN_TEST_POSTGRES, a
// DSN such as postgres://castellan@127.0.0.1:5433/castellan_test?sslmode=disable
// (scripts/test starts one), in a schema of its own.
func TestPostgres(t *testing.T) {
	testLog(t, audittest.PostgresDSN(t))
}

func TestOpenBadSpec(t *testing.T) {
	for _, spec := range []string{"", "mysql://x", "sqlite:"} {
		if _, err := Open(context.Background(), spec); err == nil {
			t.Errorf("Open(%q) succeeded", spec)
		}
	}
}
