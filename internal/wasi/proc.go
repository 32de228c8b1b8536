package wasi

import (
	"context"
	"crypto/rand"
	"runtime"
	"time"

	"github.com/castellan-dev/castellan/internal/engine"
)

// writeStrings lays out NUL-terminated strings: pointers at ptrs, bytes at buf.
func writeStrings(m mem, list []string, ptrs, buf uint32) Errno {
	for i, a := range list {
		m.putU32(ptrs+uint32(i)*4, buf)
		b := m.bytes(buf, uint32(len(a))+1)
		copy(b, a)
		b[len(a)] = 0
		buf += uint32(len(a)) + 1
	}
	return errSuccess
}

func writeSizes(m mem, list []string, countPtr, sizePtr uint32) Errno {
	n := 0
	for _, a := range list {
		n += len(a) + 1
	}
	m.putU32(countPtr, uint32(len(list)))
	m.putU32(sizePtr, uint32(n))
	return errSuccess
}

func argsGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return writeStrings(m, s.args, uint32(p[0]), uint32(p[1]))
}

func argsSizesGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return writeSizes(m, s.args, uint32(p[0]), uint32(p[1]))
}

func environGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return writeStrings(m, s.env, uint32(p[0]), uint32(p[1]))
}

func environSizesGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	return writeSizes(m, s.env, uint32(p[0]), uint32(p[1]))
}

// clockResolution is what clock_res_get reports for every clock: Go's
// clocks have nanosecond fields but about microsecond real resolution.
const clockResolution = uint64(time.Microsecond)

func clockResGet(_ *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	switch uint32(p[0]) {
	case clockRealtime, clockMonotonic, clockProcessCputime, clockThreadCputime:
		m.putU64(uint32(p[1]), clockResolution)
		return errSuccess
	}
	return errInval
}

func clockTimeGet(s *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	t, errno := s.now(uint32(p[0]))
	if errno != errSuccess {
		return errno
	}
	m.putU64(uint32(p[2]), t)
	return errSuccess
}

// now reads a clock in nanoseconds. Monotonic time counts from the start
// of the run. The CPU-time clocks are approximated by the monotonic clock:
// a keep runs one guest thread, and Go offers no portable per-thread CPU
// clock (see notes/runtime.md).
func (s *System) now(id uint32) (uint64, Errno) {
	switch id {
	case clockRealtime:
		return uint64(time.Now().UnixNano()), errSuccess
	case clockMonotonic, clockProcessCputime, clockThreadCputime:
		return uint64(time.Since(s.start).Nanoseconds()), errSuccess
	}
	return 0, errInval
}

func randomGet(_ *System, _ context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	b := m.bytes(uint32(p[0]), uint32(p[1]))
	if _, err := rand.Read(b); err != nil {
		return errIo
	}
	return errSuccess
}

func procExit(_ *System, _ context.Context, c engine.Caller, _ mem, p []uint64) Errno {
	c.Exit(uint32(p[0]))
	return errSuccess // not reached
}

// procRaise is ENOSYS: WASI has no signal handlers, and the witx marks
// proc_raise as removed from later snapshots; a guest that raises a signal
// gets an error to handle instead of a silent exit.
func procRaise(*System, context.Context, engine.Caller, mem, []uint64) Errno {
	return errNosys
}

func schedYield(*System, context.Context, engine.Caller, mem, []uint64) Errno {
	runtime.Gosched()
	return errSuccess
}
