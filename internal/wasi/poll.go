package wasi

import (
	"context"
	"time"

	"github.com/castellan-dev/castellan/internal/engine"
)

// subscription is one decoded poll_oneoff subscription.
type subscription struct {
	userdata uint64
	typ      uint8
	fd       uint32
	deadline time.Time // clock subscriptions
	errno    Errno     // set when the subscription is invalid: reported at once
}

// pollOneoff waits until at least one subscription is ready: a clock
// reaching its deadline, or a descriptor that can be read or written
// without blocking. It sleeps on the system's wake channel and a timer for
// the earliest deadline; it never spins.
func pollOneoff(s *System, ctx context.Context, _ engine.Caller, m mem, p []uint64) Errno {
	in, out, n, neventsPtr := uint32(p[0]), uint32(p[1]), uint32(p[2]), uint32(p[3])
	if n == 0 {
		return errInval
	}
	if n > 1<<16 {
		return errInval
	}
	raw := m.bytes(in, n*subscriptionSize)
	evs := m.bytes(out, n*eventSize)
	m.bytes(neventsPtr, 4)
	if cap(s.pollSubs) < int(n) {
		s.pollSubs = make([]subscription, n)
	}
	subs := s.pollSubs[:n]
	clear(subs)
	now := time.Now()
	var earliest time.Time
	for i := range subs {
		b := raw[i*subscriptionSize:]
		sub := &subs[i]
		sub.userdata = le.Uint64(b[0:])
		sub.typ = b[8]
		switch sub.typ {
		case eventtypeClock:
			id, timeout, flags := le.Uint32(b[16:]), le.Uint64(b[24:]), le.Uint16(b[40:])
			if flags&subscriptionClockAbstime != 0 {
				switch id {
				case clockRealtime:
					sub.deadline = time.Unix(0, int64(timeout))
				case clockMonotonic, clockProcessCputime, clockThreadCputime:
					sub.deadline = s.start.Add(time.Duration(timeout))
				default:
					sub.errno = errInval
				}
			} else {
				switch id {
				case clockRealtime, clockMonotonic, clockProcessCputime, clockThreadCputime:
					if timeout > uint64(1<<62) {
						timeout = 1 << 62
					}
					sub.deadline = now.Add(time.Duration(timeout))
				default:
					sub.errno = errInval
				}
			}
			if sub.errno == errSuccess && (earliest.IsZero() || sub.deadline.Before(earliest)) {
				earliest = sub.deadline
			}
		case eventtypeFdRead, eventtypeFdWrite:
			sub.fd = le.Uint32(b[16:])
			d, errno := s.get(sub.fd)
			if errno != errSuccess {
				sub.errno = errno
			} else if in, ok := d.f.(*stdinKind); ok && sub.typ == eventtypeFdRead && s.opts.Stdin != nil {
				in.pump()
			}
		default:
			sub.errno = errInval
		}
	}
	var timer <-chan time.Time
	for {
		ch := s.waiter()
		now := time.Now()
		nev := uint32(0)
		// Reads of direct sockets are looked at together, in one ppoll.
		fds, fdSubs := s.pollFds[:0], s.pollFdSubs[:0]
		for i := range subs {
			sub := &subs[i]
			if c := s.directRead(sub); c != nil {
				if fd := c.fd(); fd >= 0 {
					fds = append(fds, pollFd{Fd: fd, Events: pollIn})
					fdSubs = append(fdSubs, sub)
					s.pollFds, s.pollFdSubs = fds, fdSubs
					continue
				}
			}
			if ev, ok := s.ready(sub, now); ok {
				copy(evs[nev*eventSize:], ev[:])
				nev++
			}
		}
		if len(fds) > 0 {
			if nev > 0 {
				pollNow(fds)
			} else {
				s.pollWait(ctx, ch, fds, earliest)
			}
			for i, sub := range fdSubs {
				c := s.directRead(sub)
				if c == nil {
					continue
				}
				ok, nbytes, hangup, errno := c.readEvent(fds[i].Fd, fds[i].Revents)
				if ok {
					ev := event(sub, nbytes, hangup, errno)
					copy(evs[nev*eventSize:], ev[:])
					nev++
				}
			}
		}
		if nev > 0 {
			m.putU32(neventsPtr, nev)
			return errSuccess
		}
		if len(fds) > 0 {
			continue // pollWait returned: look again
		}
		if timer == nil && !earliest.IsZero() {
			t := time.NewTimer(time.Until(earliest))
			defer t.Stop()
			timer = t.C
		}
		s.wait(ctx, ch, timer)
	}
}

// directRead returns the direct socket a read subscription watches, if
// it is one that is not ready without a look at the socket.
func (s *System) directRead(sub *subscription) *conn {
	if sub.typ != eventtypeFdRead || sub.errno != errSuccess {
		return nil
	}
	d, errno := s.get(sub.fd)
	if errno != errSuccess {
		return nil
	}
	if k, ok := d.f.(*connKind); ok && k.c.pollable() {
		return k.c
	}
	return nil
}

// event encodes a ready fd_read or fd_write subscription.
func event(sub *subscription, nbytes int, hangup bool, errno Errno) (ev [eventSize]byte) {
	le.PutUint64(ev[0:], sub.userdata)
	ev[10] = sub.typ
	le.PutUint16(ev[8:], uint16(errno))
	le.PutUint64(ev[16:], uint64(nbytes))
	if hangup {
		le.PutUint16(ev[24:], eventFdReadwriteHangup)
	}
	return ev
}

// ready reports whether sub is ready and, if so, its event.
func (s *System) ready(sub *subscription, now time.Time) (ev [eventSize]byte, ok bool) {
	le.PutUint64(ev[0:], sub.userdata)
	ev[10] = sub.typ
	if sub.errno != errSuccess {
		le.PutUint16(ev[8:], uint16(sub.errno))
		return ev, true
	}
	if sub.typ == eventtypeClock {
		return ev, !now.Before(sub.deadline)
	}
	d, errno := s.get(sub.fd)
	if errno != errSuccess {
		le.PutUint16(ev[8:], uint16(errno))
		return ev, true
	}
	var nbytes int
	var hangup bool
	if sub.typ == eventtypeFdWrite {
		ok, errno = d.f.writable()
		hangup = errno != errSuccess
	} else {
		// stdin without a reader, null, directories, stdout: never block.
		ok, nbytes, hangup, errno = d.f.readable()
	}
	if !ok {
		return ev, false
	}
	return event(sub, nbytes, hangup, errno), true
}
