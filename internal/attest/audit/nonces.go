package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The used-nonce ledger: the service's challenge nonces are sealed and carry
// their issue time, so nothing is stored to issue one; what must be stored
// is each nonce presented, until it expires, so that it serves once. The
// ledger is bounded: past max unexpired entries it refuses to record more
// (the service answers 503 to that redeem, never to a challenge).

var (
	// ErrNonceUsed: the nonce was already presented.
	ErrNonceUsed = errors.New("nonce was already used")
	// ErrNoncesFull: the ledger holds its maximum of unexpired nonces.
	ErrNoncesFull = errors.New("too many nonces used within their lifetime; try again shortly")
)

// NonceLedger records used nonces.
type NonceLedger interface {
	// UseNonce records id as used until expires. It returns ErrNonceUsed
	// when id is recorded already, and ErrNoncesFull when max unexpired
	// ids are recorded.
	UseNonce(ctx context.Context, id []byte, expires, now time.Time, max int) error
}

var (
	_ NonceLedger = (*DB)(nil)
	_ NonceLedger = (*MemoryNonces)(nil)
)

// nonceSweepInterval is how often a process deletes expired used nonces from
// the database and recounts the unexpired ones (all replicas' entries). In
// between it counts its own entries, so with replicas the ledger can exceed
// max by what the others add within one interval.
const nonceSweepInterval = 5 * time.Second

// nonceState is a DB's view of its ledger table.
type nonceState struct {
	mu        sync.Mutex
	count     int // unexpired entries at the last sweep, plus ours since
	lastSweep time.Time
}

// UseNonce implements NonceLedger in the database: SQLite keeps the ledger
// of one process (it survives a restart, as the nonce key does), PostgreSQL
// the ledger that replicas share, so a nonce serves once across all of them.
func (d *DB) UseNonce(ctx context.Context, id []byte, expires, now time.Time, max int) error {
	st := &d.nonces
	st.mu.Lock()
	since := now.Sub(st.lastSweep)
	if since >= nonceSweepInterval || since < 0 || (st.count >= max && since >= time.Second) {
		if err := d.sweepNonces(ctx, now); err != nil {
			st.mu.Unlock()
			return err
		}
	}
	full := st.count >= max
	st.mu.Unlock()
	if full {
		return ErrNoncesFull
	}
	res, err := d.db.ExecContext(ctx, `INSERT INTO used_nonces (id, expires) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`,
		id, expires.UnixNano())
	if err != nil {
		return fmt.Errorf("used-nonce ledger: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("used-nonce ledger: %w", err)
	}
	if n == 0 {
		return ErrNonceUsed
	}
	st.mu.Lock()
	st.count++
	st.mu.Unlock()
	return nil
}

// sweepNonces deletes expired entries and recounts; d.nonces.mu is held.
func (d *DB) sweepNonces(ctx context.Context, now time.Time) error {
	if _, err := d.db.ExecContext(ctx, `DELETE FROM used_nonces WHERE expires <= $1`, now.UnixNano()); err != nil {
		return fmt.Errorf("used-nonce ledger: %w", err)
	}
	var n int
	if err := d.db.QueryRowContext(ctx, `SELECT count(*) FROM used_nonces`).Scan(&n); err != nil {
		return fmt.Errorf("used-nonce ledger: %w", err)
	}
	d.nonces.count, d.nonces.lastSweep = n, now
	return nil
}

// UsedNonces returns the number of unexpired used nonces at now.
func (d *DB) UsedNonces(ctx context.Context, now time.Time) (int, error) {
	var n int
	if err := d.db.QueryRowContext(ctx, `SELECT count(*) FROM used_nonces WHERE expires > $1`, now.UnixNano()).Scan(&n); err != nil {
		return 0, fmt.Errorf("used-nonce ledger: %w", err)
	}
	return n, nil
}

// MemoryNonces is a NonceLedger in memory, for a service without a
// database ledger (tests, fuzzing). The zero value is ready.
type MemoryNonces struct {
	mu        sync.Mutex
	m         map[string]time.Time // id → expiry
	lastSweep time.Time
}

// UseNonce implements NonceLedger.
func (m *MemoryNonces) UseNonce(_ context.Context, id []byte, expires, now time.Time, max int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.m == nil {
		m.m = map[string]time.Time{}
	}
	if e, ok := m.m[string(id)]; ok && now.Before(e) {
		return ErrNonceUsed
	}
	if len(m.m) >= max && now.Sub(m.lastSweep) >= time.Second {
		for k, e := range m.m {
			if !now.Before(e) {
				delete(m.m, k)
			}
		}
		m.lastSweep = now
	}
	if len(m.m) >= max {
		return ErrNoncesFull
	}
	m.m[string(id)] = expires
	return nil
}
