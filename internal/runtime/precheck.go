package runtime

import (
	"errors"
	"fmt"
)

// maxLocals bounds the locals of one function, as wasmtime does.
const maxLocals = 50000

// precheck walks the module's sections before wazero decodes it and
// refuses vector counts larger than the bytes that could hold them. wazero
// allocates a vector as soon as it reads its count, so a 20-byte module
// claiming four billion parameters would otherwise cost gigabytes (found by
// FuzzCheck). It checks sizes only; wazero still validates everything.
func precheck(wasm []byte) error {
	r := &reader{b: wasm, pos: 8}
	for r.pos < len(r.b) {
		id := r.byte()
		size := r.u32()
		if r.err != nil {
			return r.err
		}
		if uint64(size) > uint64(len(r.b)-r.pos) {
			return fmt.Errorf("section %d: size %d runs past the end of the module", id, size)
		}
		s := &reader{b: r.b[r.pos : r.pos+int(size)]}
		r.pos += int(size)
		switch id {
		case 0:
			s.custom()
		case 1:
			s.vec(func() { // function types
				if s.byte() != 0x60 {
					s.fail("function type does not start with 0x60")
					return
				}
				s.skip(int(s.count())) // params: one byte each at least
				s.skip(int(s.count())) // results
			})
		case 2, 3, 4, 6, 7, 13:
			s.count()
		case 5:
			// The memory limit is per memory: wasmtime, with multi-memory
			// on, would give each of up to 100 memories the whole limit.
			// wazero refuses them too, in nearly these words.
			if n := s.count(); n > 1 {
				s.fail(fmt.Sprintf("at most one memory allowed in module, but read %d", n))
			}
		case 9:
			s.vec(s.elementSegment)
		case 11:
			s.vec(s.dataSegment)
		case 10:
			s.vec(func() { // code
				n := s.u32()
				if uint64(n) > uint64(len(s.b)-s.pos) {
					s.fail("function body runs past the end of the section")
					return
				}
				body := &reader{b: s.b[s.pos : s.pos+int(n)]}
				s.pos += int(n)
				total := uint64(0)
				body.vec(func() {
					total += uint64(body.u32())
					body.byte()
					if total > maxLocals {
						body.fail(fmt.Sprintf("more than %d locals", maxLocals))
					}
				})
				if body.err != nil {
					s.err = body.err
				}
			})
		}
		if s.err != nil {
			return fmt.Errorf("section %d: %w", id, s.err)
		}
	}
	return r.err
}

type reader struct {
	b   []byte
	pos int
	err error
}

var errShort = errors.New("unexpected end")

func (r *reader) fail(msg string) {
	if r.err == nil {
		r.err = errors.New(msg)
	}
}

func (r *reader) byte() byte {
	if r.err != nil {
		return 0
	}
	if r.pos >= len(r.b) {
		r.err = errShort
		return 0
	}
	c := r.b[r.pos]
	r.pos++
	return c
}

// u32 reads an unsigned LEB128 number of at most 5 bytes.
func (r *reader) u32() uint32 {
	var v uint64
	for shift := 0; shift < 35; shift += 7 {
		c := r.byte()
		if r.err != nil {
			return 0
		}
		v |= uint64(c&0x7f) << shift
		if c&0x80 == 0 {
			if v > 1<<32-1 {
				r.fail("number does not fit in 32 bits")
				return 0
			}
			return uint32(v)
		}
	}
	r.fail("number longer than 5 bytes")
	return 0
}

// count reads a vector length and checks that the rest of the section has
// at least one byte per element.
func (r *reader) count() uint32 {
	n := r.u32()
	if r.err == nil && uint64(n) > uint64(len(r.b)-r.pos) {
		r.fail(fmt.Sprintf("vector of %d elements in %d bytes", n, len(r.b)-r.pos))
		return 0
	}
	return n
}

func (r *reader) vec(elem func()) {
	n := r.count()
	for i := uint32(0); i < n && r.err == nil; i++ {
		elem()
	}
}

func (r *reader) skip(n int) {
	if r.err != nil {
		return
	}
	if n > len(r.b)-r.pos {
		r.err = errShort
		return
	}
	r.pos += n
}

// name skips a length-prefixed string.
func (r *reader) name() string {
	n := r.count()
	if r.err != nil {
		return ""
	}
	s := string(r.b[r.pos : r.pos+int(n)])
	r.pos += int(n)
	return s
}

// custom checks the name section, which wazero decodes.
func (r *reader) custom() {
	if r.name() != "name" || r.err != nil {
		return
	}
	for r.pos < len(r.b) && r.err == nil {
		id := r.byte()
		size := r.u32()
		if r.err != nil || uint64(size) > uint64(len(r.b)-r.pos) {
			r.fail("name subsection runs past the end")
			return
		}
		sub := &reader{b: r.b[r.pos : r.pos+int(size)]}
		r.pos += int(size)
		switch id {
		case 1: // function names: vec(index, name)
			sub.vec(func() { sub.u32(); sub.name() })
		case 2: // local names: vec(index, vec(index, name))
			sub.vec(func() {
				sub.u32()
				sub.vec(func() { sub.u32(); sub.name() })
			})
		}
		if sub.err != nil {
			r.err = sub.err
		}
	}
}

// dataSegment checks the length of a data segment's bytes. Offset
// expressions it cannot skip end the check (wazero validates them).
func (r *reader) dataSegment() {
	switch r.u32() {
	case 0:
		r.constExpr()
	case 1:
	case 2:
		r.u32()
		r.constExpr()
	default:
		r.fail("bad data segment flags")
		return
	}
	r.skip(int(r.count()))
}

// elementSegment checks the vectors of an element segment.
func (r *reader) elementSegment() {
	flags := r.u32()
	if flags > 7 {
		r.fail("bad element segment flags")
		return
	}
	if flags&3 == 2 { // active with a table index
		r.u32()
	}
	if flags&1 == 0 { // active: offset expression
		r.constExpr()
	}
	if flags&3 != 0 { // element kind or reference type
		if t := r.byte(); t == 0x63 || t == 0x64 {
			r.u32()
		}
	}
	if flags&4 == 0 {
		r.vec(func() { r.u32() })
	} else {
		r.vec(r.constExpr)
	}
}

func (r *reader) constExpr() {
	for r.err == nil {
		switch op := r.byte(); op {
		case 0x0b: // end
			return
		case 0x41, 0x42, 0x23, 0xd2: // i32.const, i64.const, global.get, ref.func
			for r.err == nil && r.byte()&0x80 != 0 {
			}
		case 0x43:
			r.skip(4)
		case 0x44:
			r.skip(8)
		case 0xd0:
			r.byte()
		case 0x6a, 0x6b, 0x6c, 0x7c, 0x7d, 0x7e: // extended const
		default:
			r.fail(fmt.Sprintf("unexpected opcode 0x%x in a constant expression", op))
		}
	}
}

// Bounds on a module's tables. The memory limit does not cover tables, and
// both engines let table.grow take up to 2^32-1 elements of host memory
// (8 bytes each in wazero: 32 GiB per call, killing the host process).
// Go's wasip1 modules declare their table without a maximum; boundTables
// gives every table one, so that table.grow past it fails (returns -1) as
// the specification allows, and the host's cost is bounded: at most
// maxTables tables of maxTableElements elements, 64 MiB.
const (
	maxTables        = 8
	maxTableElements = 1 << 20
	// boundTablesVersion names boundTables's output in a cache key
	// derived from the module's own sum: change it whenever boundTables
	// would rewrite a module differently.
	boundTablesVersion = "castellan boundTables v1: tables at most 1048576 elements"
)

// boundTables returns wasm with each table's maximum at most
// maxTableElements, and whether it changed any (if not, it returns wasm
// itself), or an error for a
// module whose tables need more: one with too many tables, a minimum over
// the bound, or a table type it does not know. It runs after precheck.
func boundTables(wasm []byte) (_ []byte, changed bool, _ error) {
	r := &reader{b: wasm, pos: 8}
	for r.pos < len(r.b) {
		id := r.byte()
		head := r.pos // where the section size starts
		size := r.u32()
		if r.err != nil {
			return nil, false, r.err
		}
		if uint64(size) > uint64(len(r.b)-r.pos) {
			return nil, false, fmt.Errorf("section %d: size %d runs past the end of the module", id, size)
		}
		start, end := r.pos, r.pos+int(size)
		r.pos = end
		if id != 4 {
			continue
		}
		body, changed, err := boundTableSection(wasm[start:end])
		if err != nil {
			return nil, false, err
		}
		if !changed {
			return wasm, false, nil
		}
		out := make([]byte, 0, len(wasm)+8)
		out = append(out, wasm[:head]...)
		out = appendU32(out, uint32(len(body)))
		out = append(out, body...)
		return append(out, wasm[end:]...), true, nil
	}
	return wasm, false, nil
}

// boundTableSection rewrites a table section's limits (see boundTables).
func boundTableSection(sec []byte) ([]byte, bool, error) {
	s := &reader{b: sec}
	n := s.count()
	if s.err != nil {
		return nil, false, fmt.Errorf("table section: %w", s.err)
	}
	if n > maxTables {
		return nil, false, fmt.Errorf("table section: %d tables, over the limit of %d", n, maxTables)
	}
	out := appendU32(nil, n)
	changed := false
	for i := range n {
		from := s.pos
		switch t := s.byte(); t {
		case 0x70, 0x6f: // funcref, externref
		case 0x63, 0x64: // (ref null? heaptype): a heap type, a signed LEB
			for s.err == nil && s.byte()&0x80 != 0 {
			}
		default:
			if s.err == nil {
				return nil, false, fmt.Errorf("table %d: unknown table type 0x%02x", i, t)
			}
		}
		out = append(out, sec[from:s.pos]...)
		flags := s.byte()
		min := s.u32()
		max, hasMax := uint32(0), flags == 1
		if hasMax {
			max = s.u32()
		}
		switch {
		case s.err != nil:
			return nil, false, fmt.Errorf("table %d: %w", i, s.err)
		case flags > 1:
			return nil, false, fmt.Errorf("table %d: limits flags 0x%02x are not supported", i, flags)
		case min > maxTableElements:
			return nil, false, fmt.Errorf("table %d: minimum of %d elements, over the limit of %d", i, min, maxTableElements)
		}
		if !hasMax || max > maxTableElements {
			max, changed = maxTableElements, true
		}
		out = append(out, 1)
		out = appendU32(out, min)
		out = appendU32(out, max)
	}
	if s.pos != len(sec) {
		return nil, false, fmt.Errorf("table section: %d bytes after the tables", len(sec)-s.pos)
	}
	return out, changed, nil
}

// appendU32 appends v as an unsigned LEB128 number.
func appendU32(b []byte, v uint32) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}
