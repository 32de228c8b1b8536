package host

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers "sqlite"
)

// DBFile is the agent's database inside its state folder.
const DBFile = "agent.db"

const schema = `
CREATE TABLE IF NOT EXISTS tokens (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	name    TEXT NOT NULL,
	hash    BLOB NOT NULL UNIQUE,
	created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keeps (
	id          TEXT PRIMARY KEY,
	name        TEXT NOT NULL,
	backend     TEXT NOT NULL,
	platform    TEXT NOT NULL,
	digest      TEXT NOT NULL,
	limits      TEXT NOT NULL,
	state       TEXT NOT NULL,
	pid         INTEGER NOT NULL DEFAULT 0,
	start_ticks INTEGER NOT NULL DEFAULT 0,
	created     TEXT NOT NULL,
	ended       TEXT NOT NULL DEFAULT '',
	exit_code   INTEGER,
	signal      TEXT NOT NULL DEFAULT '',
	reason      TEXT NOT NULL DEFAULT '',
	hello       BLOB,
	attached    INTEGER NOT NULL DEFAULT 0,
	enforcement TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
	seq     INTEGER PRIMARY KEY AUTOINCREMENT,
	keep    TEXT NOT NULL,
	time    TEXT NOT NULL,
	type    TEXT NOT NULL,
	message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_keep ON events (keep, seq);
`

// store is the agent's SQLite state: tokens (hashes only), keeps and their
// events. Every state change is written before it is reported.
type store struct {
	db *sql.DB
}

func openStore(dir string) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state folder %s: %w", dir, err)
	}
	if err := checkStateDir(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, DBFile)
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	// One writer at a time; SQLite serialises writers anyway and this
	// avoids busy errors between the agent's own connections.
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	if err := migrate(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	os.Chmod(path, 0o600)
	return &store{db: db}, nil
}

func (s *store) close() error { return s.db.Close() }

// TokenPrefix starts every agent token.
const TokenPrefix = "cstl_"

// CreateToken makes a bearer token for the agent whose state folder is
// dir, stores its SHA-256 and returns the token. The token itself is not
// stored: it is shown once.
func CreateToken(dir, name string) (string, error) {
	s, err := openStore(dir)
	if err != nil {
		return "", err
	}
	defer s.close()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw)
	sum := sha256.Sum256([]byte(tok))
	if name == "" {
		name = "token"
	}
	if _, err := s.db.Exec(`INSERT INTO tokens (name, hash, created) VALUES (?, ?, ?)`, name, sum[:], now()); err != nil {
		return "", fmt.Errorf("storing the token: %w", err)
	}
	return tok, nil
}

// checkToken reports whether tok is a stored token, and its name.
func (s *store) checkToken(ctx context.Context, tok string) (string, bool) {
	if !strings.HasPrefix(tok, TokenPrefix) || len(tok) > 128 {
		return "", false
	}
	sum := sha256.Sum256([]byte(tok))
	var name string
	err := s.db.QueryRowContext(ctx, `SELECT name FROM tokens WHERE hash = ?`, sum[:]).Scan(&name)
	return name, err == nil
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

func parseTime(s string) *time.Time {
	if s == "" {
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil
	}
	return &t
}

func (s *store) insertKeep(k *Keep) error {
	lim, _ := json.Marshal(k.Limits)
	_, err := s.db.Exec(`INSERT INTO keeps (id, name, backend, platform, digest, limits, state, created, enforcement)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Name, k.Backend, k.Platform, k.Digest, string(lim), k.State, k.Created.UTC().Format(time.RFC3339Nano),
		strings.Join(k.Enforcement, "\n"))
	return err
}

// setStarted records the keep's process.
func (s *store) setProcess(id string, pid int, ticks uint64) error {
	_, err := s.db.Exec(`UPDATE keeps SET pid = ?, start_ticks = ? WHERE id = ?`, pid, int64(ticks), id)
	return err
}

func (s *store) setReady(id string, hello []byte) error {
	_, err := s.db.Exec(`UPDATE keeps SET state = ?, hello = ? WHERE id = ? AND state = ?`, StateReady, hello, id, StateStarting)
	return err
}

func (s *store) setState(id, state string) error {
	_, err := s.db.Exec(`UPDATE keeps SET state = ? WHERE id = ? AND state NOT IN (?, ?, ?)`, state, id, StateExited, StateFailed, StateStopped)
	return err
}

func (s *store) setAttached(id string) (bool, error) {
	r, err := s.db.Exec(`UPDATE keeps SET attached = 1 WHERE id = ? AND attached = 0 AND state = ?`, id, StateReady)
	if err != nil {
		return false, err
	}
	n, _ := r.RowsAffected()
	return n == 1, nil
}

// setEnded records how a keep ended; an ended keep is never changed again.
func (s *store) setEnded(id string, o outcome) error {
	var code any
	if o.exitCode != nil {
		code = *o.exitCode
	}
	_, err := s.db.Exec(`UPDATE keeps SET state = ?, ended = ?, exit_code = ?, signal = ?, reason = ?
		WHERE id = ? AND state NOT IN (?, ?, ?)`,
		o.state, now(), code, o.signal, o.reason, id, StateExited, StateFailed, StateStopped)
	return err
}

const keepColumns = `id, name, backend, platform, digest, limits, state, pid, start_ticks, created, ended, exit_code, signal, reason, hello, attached, enforcement, log_offset`

type keepRow struct {
	Keep
	startTicks uint64
	logOffset  int64 // how far the keep's output file has been recorded as events
}

func scanKeep(sc interface{ Scan(...any) error }) (*keepRow, error) {
	var r keepRow
	var lim, created, ended, enf string
	var code sql.NullInt64
	var ticks int64
	var hello []byte
	var attached int
	if err := sc.Scan(&r.ID, &r.Name, &r.Backend, &r.Platform, &r.Digest, &lim, &r.State, &r.PID, &ticks, &created,
		&ended, &code, &r.Signal, &r.Reason, &hello, &attached, &enf, &r.logOffset); err != nil {
		return nil, err
	}
	json.Unmarshal([]byte(lim), &r.Limits)
	if t := parseTime(created); t != nil {
		r.Created = *t
	}
	r.Ended = parseTime(ended)
	if code.Valid {
		c := int(code.Int64)
		r.ExitCode = &c
	}
	r.startTicks = uint64(ticks)
	r.Hello = hello
	r.Attached = attached != 0
	if enf != "" {
		r.Enforcement = strings.Split(enf, "\n")
	}
	return &r, nil
}

func (s *store) keep(ctx context.Context, id string) (*keepRow, error) {
	r, err := scanKeep(s.db.QueryRowContext(ctx, `SELECT `+keepColumns+` FROM keeps WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNotFound
	}
	return r, err
}

func (s *store) keeps(ctx context.Context, where string, args ...any) ([]*keepRow, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+keepColumns+` FROM keeps `+where+` ORDER BY created, id`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*keepRow
	for rows.Next() {
		r, err := scanKeep(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// addEvent records an event. An event read from a keep's output file
// (offset >= 0) is recorded together with the offset after its line, in one
// transaction: a restarted agent resumes after the last line recorded,
// neither losing nor repeating one.
func (s *store) addEvent(keep, typ, msg string, offset int64) (Event, error) {
	tx, err := s.db.Begin()
	if err != nil {
		return Event{}, err
	}
	defer tx.Rollback()
	t := time.Now().UTC()
	r, err := tx.Exec(`INSERT INTO events (keep, time, type, message) VALUES (?, ?, ?, ?)`, keep, t.Format(time.RFC3339Nano), typ, msg)
	if err != nil {
		return Event{}, err
	}
	if offset >= 0 {
		if _, err := tx.Exec(`UPDATE keeps SET log_offset = ? WHERE id = ?`, offset, keep); err != nil {
			return Event{}, err
		}
	}
	if err := tx.Commit(); err != nil {
		return Event{}, err
	}
	seq, _ := r.LastInsertId()
	return Event{Seq: seq, Keep: keep, Time: t, Type: typ, Message: msg}, nil
}

// deleteKeep removes a finished keep's record and events.
func (s *store) deleteKeep(id string) error {
	tx, err := s.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`DELETE FROM events WHERE keep = ?`, id); err != nil {
		return err
	}
	if _, err := tx.Exec(`DELETE FROM keeps WHERE id = ? AND state IN (?, ?, ?)`, id, StateExited, StateFailed, StateStopped); err != nil {
		return err
	}
	return tx.Commit()
}

// setLogOffset records how far a keep's output file was read when the
// lines read were not recorded as events.
func (s *store) setLogOffset(keep string, offset int64) error {
	_, err := s.db.Exec(`UPDATE keeps SET log_offset = ? WHERE id = ?`, offset, keep)
	return err
}

func (s *store) events(ctx context.Context, keep string, after int64, limit int) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, type, message FROM events WHERE keep = ? AND seq > ? ORDER BY seq LIMIT ?`, keep, after, limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var t string
		if err := rows.Scan(&e.Seq, &t, &e.Type, &e.Message); err != nil {
			return nil, err
		}
		e.Keep = keep
		if p := parseTime(t); p != nil {
			e.Time = *p
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
