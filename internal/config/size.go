package config

import (
	"fmt"
	"strconv"
	"strings"
)

// maxSize bounds sizes so that byte counts fit an int64 with room to spare.
const maxSize = 1 << 50

var units = []struct {
	suffix string
	mult   uint64
}{
	// Longest suffixes first so that "KiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1000}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"TB", 1000 * 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseSize reads a byte count such as "64MiB", "1GiB", "512KiB", "10MB"
// (decimal units) or "4096" / "4096B".
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			mult = u.mult
			t = strings.TrimSpace(strings.TrimSuffix(t, u.suffix))
			break
		}
	}
	if t == "" || t[0] < '0' || t[0] > '9' {
		return 0, fmt.Errorf("%q is not a size such as \"64MiB\", \"1GiB\" or \"512KiB\"", s)
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size such as \"64MiB\", \"1GiB\" or \"512KiB\"", s)
	}
	if n > maxSize/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n * mult, nil
}

// sizeValue reads a TOML size: a non-negative integer of bytes or a string
// for ParseSize.
func sizeValue(v any) (uint64, error) {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return 0, fmt.Errorf("%d is negative", v)
		}
		if v > maxSize {
			return 0, fmt.Errorf("%d is too large", v)
		}
		return uint64(v), nil
	case string:
		return ParseSize(v)
	default:
		return 0, fmt.Errorf("want a byte count or a size string such as \"64MiB\", not %s", typeName(v))
	}
}
