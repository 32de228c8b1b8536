//go:build !linux

package wasi

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"
)

// Elsewhere than Linux every connection has a pump goroutine (sock.go)
// and waits are on the wake channel: no connection is direct, so
// poll_oneoff never has sockets to ppoll and the functions below only
// keep the shared code portable.
const directReads = false

type kicker struct{}

type pollFd struct {
	Fd      int32
	Events  int16
	Revents int16
}

const pollIn = 0

func (s *System) kickSleepers() {}
func (s *System) closeKicker()  {}
func pollNow([]pollFd)          {}

// pollWait waits on the wake channel and the deadline.
func (s *System) pollWait(ctx context.Context, ch <-chan struct{}, _ []pollFd, deadline time.Time) {
	var timer <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timer = t.C
	}
	s.wait(ctx, ch, timer)
}

func (c *conn) fd() int32 { return -1 }

func (c *conn) pollable() bool { return false }

func (c *conn) fillTLS() {}

func (c *conn) readTLS(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	return c.pump.read(ctx, iovs, nonblock, peek)
}

func (c *conn) readDirect(ctx context.Context, iovs [][]byte, nonblock, peek bool) (int, Errno) {
	return c.pump.read(ctx, iovs, nonblock, peek)
}

func (c *conn) directReadiness() (bool, int, bool, Errno) { return c.pump.readiness() }

func (c *conn) readEvent(int32, int16) (bool, int, bool, Errno) { return c.pump.readiness() }

// sockConn exists on Linux only: elsewhere connections stay in the
// runtime's poller.
type sockConn struct {
	net.Conn
	raw syscall.RawConn
}

func unpoll(*net.TCPConn) (*sockConn, error) {
	return nil, errors.New("connections stay in the runtime's poller on this system")
}
