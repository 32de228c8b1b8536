//go:build !unix

package wasi

import "syscall"

// rawSock queues every write for the writer goroutine where there is no
// non-blocking write(2).
type rawSock struct{}

func newRawSock(syscall.RawConn) *rawSock { return &rawSock{} }

func (*rawSock) write([]byte) (int, error) { return 0, nil }
