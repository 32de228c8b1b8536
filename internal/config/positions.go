package config

import (
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// positions maps a key path to the line where it is defined, so that
// errors found after decoding can still name their line. go-toml's decoder
// gives values without positions; its unstable parser gives positions
// without TOML's table semantics. The document is decoded first (which
// validates it), then walked once with the parser to record lines.
//
// A path is its segments joined by pathSep; an element of an array (of
// tables or of values) is the segment idx(i).
type positions map[string]int

const pathSep = "\x00"

func idx(i int) string { return "\x01" + strconv.Itoa(i) }

func path(parts ...string) string { return strings.Join(parts, pathSep) }

// line returns the line of the deepest known prefix of parts, or 0.
func (ps positions) line(parts ...string) int {
	for n := len(parts); n > 0; n-- {
		if l, ok := ps[path(parts[:n]...)]; ok {
			return l
		}
	}
	return 0
}

// scanPositions walks data, which must already have decoded without error.
func scanPositions(data []byte) positions {
	ps := positions{}
	arrays := map[string]int{} // array-of-tables path -> elements so far
	var p unstable.Parser
	p.Reset(data)
	lineOf := func(n *unstable.Node) int {
		if n == nil || n.Raw.Length == 0 {
			return 0
		}
		return p.Shape(n.Raw).Start.Line
	}
	keyOf := func(it unstable.Iterator) (parts []string, line int) {
		for it.Next() {
			k := it.Node()
			if line == 0 {
				line = lineOf(k)
			}
			parts = append(parts, string(k.Data))
		}
		return parts, line
	}
	var record func(prefix []string, line int, v *unstable.Node)
	record = func(prefix []string, line int, v *unstable.Node) {
		key := path(prefix...)
		if _, ok := ps[key]; !ok {
			ps[key] = line
		}
		switch v.Kind {
		case unstable.InlineTable:
			it := v.Children()
			for it.Next() {
				kv := it.Node()
				if kv.Kind != unstable.KeyValue {
					continue
				}
				parts, l := keyOf(kv.Key())
				record(append(clone(prefix), parts...), l, kv.Value())
			}
		case unstable.Array:
			it := v.Children()
			i := 0
			for it.Next() {
				e := it.Node()
				if e.Kind == unstable.Comment {
					continue
				}
				l := lineOf(e)
				if l == 0 {
					l = line
				}
				record(append(clone(prefix), idx(i)), l, e)
				i++
			}
		}
	}
	var prefix []string
	for p.NextExpression() {
		n := p.Expression()
		switch n.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := keyOf(n.Key())
			if len(parts) == 0 {
				continue
			}
			var resolved []string
			last := len(parts)
			if n.Kind == unstable.ArrayTable {
				last--
			}
			for _, part := range parts[:last] {
				resolved = append(resolved, part)
				if c := arrays[path(resolved...)]; c > 0 {
					resolved = append(resolved, idx(c-1))
				}
			}
			if n.Kind == unstable.ArrayTable {
				// [[a.b]] starts a new element of the array a.b.
				resolved = append(resolved, parts[last])
				k := path(resolved...)
				c := arrays[k]
				arrays[k] = c + 1
				resolved = append(resolved, idx(c))
			}
			ps[path(resolved...)] = line
			prefix = resolved
		case unstable.KeyValue:
			parts, line := keyOf(n.Key())
			record(append(clone(prefix), parts...), line, n.Value())
		}
	}
	return ps
}

func clone(s []string) []string { return append([]string(nil), s...) }
