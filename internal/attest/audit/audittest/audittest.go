// Package audittest gives tests a PostgreSQL schema of their own on the
// server named by CASTELLAN_TEST_POSTGRES (scripts/test starts one), so that
// test packages running at once do not share tables.
package audittest

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
)

// Env names the DSN of the test server.
const Env = "CASTELLAN_TEST_POSTGRES"

// PostgresDSN returns a DSN whose search_path is a fresh, empty schema that
// is dropped when the test ends; it skips the test when Env is not set.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(Env)
	if dsn == "" {
		t.Skip(Env + " is not set: no PostgreSQL to test against (scripts/test starts one)")
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("%s: %v", Env, err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 8)
	rand.Read(b)
	schema := "castellan_test_" + hex.EncodeToString(b)
	if _, err := db.Exec(`CREATE SCHEMA ` + schema); err != nil {
		db.Close()
		t.Fatalf("%s: creating a schema: %v", Env, err)
	}
	t.Cleanup(func() {
		db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		db.Close()
	})
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
