package host

import (
	"database/sql"
	"strings"
)

// migrations are columns added to the schema after its first release: an
// older state database gets them when an agent opens it.
var migrations = []string{
	`ALTER TABLE keeps ADD COLUMN log_offset INTEGER NOT NULL DEFAULT 0`,
}

func migrate(db *sql.DB) error {
	for _, m := range migrations {
		if _, err := db.Exec(m); err != nil && !strings.Contains(err.Error(), "duplicate column") {
			return err
		}
	}
	return nil
}
