// Package audit keeps the attestation service's record of decisions: every
// request accepted or refused, with the failed check and reason, a summary
// of the claims and the serial of the certificate issued; and its ledger of
// used challenge nonces (nonces.go), shared by replicas. One schema serves
// SQLite (the default, through the pure Go modernc.org/sqlite driver, in WAL
// mode) and PostgreSQL (for a replicated service, through pgx's database/sql
// driver); migrations are applied when the log is opened.
package audit

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "modernc.org/sqlite"             // registers "sqlite"
)

// Decision is one audit record.
type Decision struct {
	Time           time.Time
	Accepted       bool
	Check          string // the failed check; empty when accepted
	Reason         string // one line; empty when accepted
	Platform       string
	Simulated      bool
	Measurement    string // hex
	TCB            string // "component=svn,..." sorted
	WorkloadDigest string
	Package        string
	Serial         string // hex serial of the issued certificate
	NotAfter       time.Time
	Remote         string // the client's address
}

// Log records decisions.
type Log interface {
	// Record stores d; the service does not hand out a certificate whose
	// issue it could not record.
	Record(ctx context.Context, d Decision) error
	// Recent returns up to n records, newest first.
	Recent(ctx context.Context, n int) ([]Decision, error)
	Close() error
}

type dialect int

const (
	sqliteDialect dialect = iota
	postgresDialect
)

// DB is a Log on a database/sql database.
type DB struct {
	db      *sql.DB
	dialect dialect
	insert  *sql.Stmt
	nonces  nonceState
}

var _ Log = (*DB)(nil)

// Open opens the log named by spec: "sqlite:PATH" (the file is created, and
// its folder with mode 0700), or a "postgres://" / "postgresql://" DSN.
func Open(ctx context.Context, spec string) (*DB, error) {
	var d *DB
	switch {
	case strings.HasPrefix(spec, "sqlite:"):
		path := strings.TrimPrefix(spec, "sqlite:")
		if path == "" {
			return nil, errors.New("database sqlite: empty path")
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("database %s: %w", path, err)
		}
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)&_pragma=synchronous(NORMAL)&_txlock=immediate")
		if err != nil {
			return nil, fmt.Errorf("database %s: %w", path, err)
		}
		// One writer: SQLite serialises writes anyway, and one connection
		// avoids SQLITE_BUSY between our own connections.
		db.SetMaxOpenConns(1)
		d = &DB{db: db, dialect: sqliteDialect}
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		db, err := sql.Open("pgx", spec)
		if err != nil {
			return nil, fmt.Errorf("database postgres: %w", err)
		}
		db.SetMaxOpenConns(8)
		d = &DB{db: db, dialect: postgresDialect}
	default:
		return nil, fmt.Errorf("database %q: want sqlite:PATH or a postgres:// URL", spec)
	}
	if err := d.db.PingContext(ctx); err != nil {
		d.db.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	if err := d.migrate(ctx); err != nil {
		d.db.Close()
		return nil, err
	}
	st, err := d.db.PrepareContext(ctx, `INSERT INTO decisions
		(at, accepted, check_name, reason, platform, simulated, measurement, tcb, workload_digest, package, serial, not_after, remote)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`)
	if err != nil {
		d.db.Close()
		return nil, fmt.Errorf("database: preparing insert: %w", err)
	}
	d.insert = st
	return d, nil
}

// migration is one schema step; sqlite and postgres differ only in types.
type migration struct {
	sqlite, postgres string
}

// migrations are applied in order; index+1 is the schema version. Never
// edit one that has shipped: append.
var migrations = []migration{
	{
		sqlite: `CREATE TABLE decisions (
			id INTEGER PRIMARY KEY AUTOINCREMENT,
			at TIMESTAMP NOT NULL,
			accepted BOOLEAN NOT NULL,
			check_name TEXT NOT NULL,
			reason TEXT NOT NULL,
			platform TEXT NOT NULL,
			simulated BOOLEAN NOT NULL,
			measurement TEXT NOT NULL,
			tcb TEXT NOT NULL,
			workload_digest TEXT NOT NULL,
			package TEXT NOT NULL,
			serial TEXT NOT NULL,
			not_after TIMESTAMP,
			remote TEXT NOT NULL
		);
		CREATE INDEX decisions_at ON decisions (at);
		CREATE INDEX decisions_serial ON decisions (serial)`,
		postgres: `CREATE TABLE decisions (
			id BIGSERIAL PRIMARY KEY,
			at TIMESTAMPTZ NOT NULL,
			accepted BOOLEAN NOT NULL,
			check_name TEXT NOT NULL,
			reason TEXT NOT NULL,
			platform TEXT NOT NULL,
			simulated BOOLEAN NOT NULL,
			measurement TEXT NOT NULL,
			tcb TEXT NOT NULL,
			workload_digest TEXT NOT NULL,
			package TEXT NOT NULL,
			serial TEXT NOT NULL,
			not_after TIMESTAMPTZ,
			remote TEXT NOT NULL
		);
		CREATE INDEX decisions_at ON decisions (at);
		CREATE INDEX decisions_serial ON decisions (serial)`,
	},
	{ // the used-nonce ledger; expires is Unix nanoseconds
		sqlite: `CREATE TABLE used_nonces (id BLOB PRIMARY KEY, expires BIGINT NOT NULL);
		CREATE INDEX used_nonces_expires ON used_nonces (expires)`,
		postgres: `CREATE TABLE used_nonces (id BYTEA PRIMARY KEY, expires BIGINT NOT NULL);
		CREATE INDEX used_nonces_expires ON used_nonces (expires)`,
	},
}

// SchemaVersion is the version Open migrates to.
var SchemaVersion = len(migrations)

func (d *DB) migrate(ctx context.Context) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("database: migrating: %w", err)
	}
	defer tx.Rollback()
	if d.dialect == postgresDialect {
		// Serialise replicas starting at once.
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7235913501)`); err != nil {
			return fmt.Errorf("database: migration lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS castellan_schema (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("database: migrating: %w", err)
	}
	var v int
	err = tx.QueryRowContext(ctx, `SELECT version FROM castellan_schema`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO castellan_schema (version) VALUES (0)`); err != nil {
			return fmt.Errorf("database: migrating: %w", err)
		}
	case err != nil:
		return fmt.Errorf("database: reading schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("database: schema version %d is newer than this castellan (%d)", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		q := migrations[i].sqlite
		if d.dialect == postgresDialect {
			q = migrations[i].postgres
		}
		for _, stmt := range strings.Split(q, ";") {
			if strings.TrimSpace(stmt) == "" {
				continue
			}
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("database: migration %d: %w", i+1, err)
			}
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE castellan_schema SET version = $1`, len(migrations)); err != nil {
		return fmt.Errorf("database: migrating: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("database: migrating: %w", err)
	}
	return nil
}

// Record implements Log.
func (d *DB) Record(ctx context.Context, r Decision) error {
	var notAfter any
	if !r.NotAfter.IsZero() {
		notAfter = r.NotAfter.UTC()
	}
	_, err := d.insert.ExecContext(ctx, r.Time.UTC(), r.Accepted, r.Check, r.Reason, r.Platform, r.Simulated,
		r.Measurement, r.TCB, r.WorkloadDigest, r.Package, r.Serial, notAfter, r.Remote)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	return nil
}

// Recent implements Log.
func (d *DB) Recent(ctx context.Context, n int) ([]Decision, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT at, accepted, check_name, reason, platform, simulated, measurement, tcb,
		workload_digest, package, serial, not_after, remote FROM decisions ORDER BY id DESC LIMIT $1`, n)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer rows.Close()
	var out []Decision
	for rows.Next() {
		var r Decision
		var notAfter sql.NullTime
		if err := rows.Scan(&r.Time, &r.Accepted, &r.Check, &r.Reason, &r.Platform, &r.Simulated, &r.Measurement,
			&r.TCB, &r.WorkloadDigest, &r.Package, &r.Serial, &notAfter, &r.Remote); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		if notAfter.Valid {
			r.NotAfter = notAfter.Time
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// pruneBatch is how many decisions one statement of Prune deletes: short
// transactions, so that recording is never held up for long.
const pruneBatch = 5000

// Prune deletes the decisions recorded before before, oldest first, in
// batches, and returns how many it deleted. Ids grow with time, so each
// batch reads from the oldest end of the table and stops at its size.
func (d *DB) Prune(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		res, err := d.db.ExecContext(ctx, `DELETE FROM decisions WHERE id IN
			(SELECT id FROM decisions WHERE at < $1 ORDER BY id LIMIT $2)`, before.UTC(), pruneBatch)
		if err != nil {
			return total, fmt.Errorf("audit log: pruning: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("audit log: pruning: %w", err)
		}
		total += n
		if n < pruneBatch {
			return total, nil
		}
	}
}

// Close implements Log.
func (d *DB) Close() error {
	if d.insert != nil {
		d.insert.Close()
	}
	return d.db.Close()
}
