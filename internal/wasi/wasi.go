// Package wasi is Castellan's own wasi_snapshot_preview1: the 46 functions
// a WASI preview 1 command imports, written against the engine-neutral
// interface of internal/engine (it never imports an engine).
//
// Castellan needs its own because a keep's descriptor table comes from the
// workload config, in order: stdio, null, TCP or TLS listeners (TLS ends in
// the keep, the workload reads plaintext), already-connected TCP or TLS
// sockets, and preopened directories confined with os.Root. poll_oneoff
// waits on all of them without busy looping: every pollable descriptor has
// a pump goroutine (an accept loop for listeners, a reader for connections
// and, once polled, for stdin) that fills a buffer and wakes the waiter.
// Each kind of descriptor is a type of its own behind one interface
// (kinds.go), which holds that kind's rules; host functions check rights
// and call it.
package wasi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/engine"
)

// ModuleName is the import module name of WASI preview 1.
const ModuleName = "wasi_snapshot_preview1"

// DefaultMaxOpenFiles is the descriptor limit when the config sets none.
const DefaultMaxOpenFiles = 1024

// Options describe the world a workload sees.
type Options struct {
	// Args is the whole argv, argv[0] included.
	Args []string
	// Env holds KEY=VALUE entries in the order the workload sees them.
	Env []string
	// Files is the descriptor table: Files[i] becomes descriptor i.
	Files []config.File
	// ConfigDir resolves relative dir paths and CA files.
	ConfigDir string
	// Stdin, Stdout and Stderr back the stdio entries; nil reads EOF and
	// discards writes.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Certificate is the keep's certificate: the server certificate of TLS
	// listeners and the client certificate of TLS connections. It must be
	// set when Files has a TLS entry.
	Certificate *tls.Certificate
	// MaxOpenFiles caps open descriptors (0: DefaultMaxOpenFiles).
	MaxOpenFiles int
	// OnListen, if set, is told the address of each listener once it is
	// bound (useful with port 0).
	OnListen func(name string, addr net.Addr)
	// Listen, if set, gives the socket of a listen entry instead of
	// binding one (the runtime shares one socket between the instances of
	// a keep). Closing the returned listener must end its Accept calls.
	Listen func(f config.File) (net.Listener, error)
}

// System is one instance of WASI for one run of one module. It is not
// safe to share between modules.
type System struct {
	opts  Options
	args  []string
	env   []string
	fds   []*fdesc // nil entries are free slots
	nopen int
	max   int
	// lingering counts closed connections still sending what the guest
	// wrote (see conn.close); they count against max until they end.
	lingering atomic.Int32
	start     time.Time

	// notify wakes poll_oneoff and blocking calls whenever a pump makes
	// progress: the channel is closed and replaced on every event.
	nmu    sync.Mutex
	notify chan struct{}

	roots []*os.Root // preopened directories, closed with the system
	stdin *pump      // started when stdin is first polled

	// Direct sockets (direct_linux.go): the eventfd that ends a ppoll,
	// how many waits are in one, and the ppoll set's storage.
	kmu      sync.Mutex
	kick     atomic.Pointer[kicker]
	kickErr  error
	sleepers atomic.Int32
	pfds     []pollFd

	// poll_oneoff's storage, reused from call to call (the guest's thread
	// alone calls it): the decoded subscriptions, the sockets of one
	// ppoll and their subscriptions.
	pollSubs   []subscription
	pollFds    []pollFd
	pollFdSubs []*subscription

	// pumps tracks the goroutines the system started, for Close.
	pumps  sync.WaitGroup
	closed chan struct{}
	netmu  sync.Mutex
	nets   map[io.Closer]struct{}

	once      sync.Once
	closeOnce sync.Once
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// New opens every resource of the descriptor table: it binds listeners,
// connects (and, for TLS, shakes hands with) connect entries, and opens
// preopened directories. On error nothing stays open.
func New(ctx context.Context, o Options) (*System, error) {
	s := &System{
		opts:   o,
		args:   o.Args,
		env:    o.Env,
		max:    o.MaxOpenFiles,
		start:  time.Now(),
		notify: make(chan struct{}),
		closed: make(chan struct{}),
		nets:   map[io.Closer]struct{}{},
	}
	if s.max <= 0 {
		s.max = DefaultMaxOpenFiles
	}
	if len(o.Files) > s.max {
		return nil, fmt.Errorf("the config names %d descriptors, over the limit of %d open files", len(o.Files), s.max)
	}
	for i, f := range o.Files {
		d, err := s.open(ctx, f)
		if err != nil {
			s.Close()
			where := fmt.Sprintf("descriptor %d (%s %q", i, f.Kind, f.Name)
			if f.Line > 0 {
				where += fmt.Sprintf(", config line %d", f.Line)
			}
			return nil, fmt.Errorf("%s): %w", where, err)
		}
		s.fds = append(s.fds, d)
		s.nopen++
	}
	return s, nil
}

// Close closes every descriptor and waits for the pump goroutines to end.
// Closing a stdin pump cannot interrupt a pending read of the caller's
// reader; that goroutine ends when the reader returns.
func (s *System) Close() error {
	s.once.Do(func() {
		close(s.closed)
	})
	s.closeOnce.Do(func() {
		for i, d := range s.fds {
			if d != nil {
				d.close()
				s.fds[i] = nil
			}
		}
		for _, r := range s.roots {
			r.Close()
		}
		if s.stdin != nil {
			s.stdin.close()
		}
		s.wake()
	})
	s.pumps.Wait()
	s.closeKicker()
	return nil
}

// Interrupt closes every network descriptor so that calls blocked in them
// return, and makes blocked host calls end the run with ErrInterrupted.
// Run calls it when the context is done; it is safe from any goroutine.
func (s *System) Interrupt() {
	s.once.Do(func() { close(s.closed) })
	s.netmu.Lock()
	nets := make([]io.Closer, 0, len(s.nets))
	for c := range s.nets {
		nets = append(nets, c)
	}
	s.netmu.Unlock()
	for _, c := range nets {
		c.Close()
	}
	s.wake()
}

// track registers a network resource for Interrupt; untrack forgets it.
func (s *System) track(c io.Closer) {
	s.netmu.Lock()
	s.nets[c] = struct{}{}
	s.netmu.Unlock()
}

func (s *System) untrack(c io.Closer) {
	s.netmu.Lock()
	delete(s.nets, c)
	s.netmu.Unlock()
}

// wake tells waiters that something changed.
func (s *System) wake() {
	s.nmu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.nmu.Unlock()
	s.kickSleepers()
}

// waiter returns the channel the next wake closes. Take it before looking
// at the state, so that no event is missed between the look and the wait.
func (s *System) waiter() <-chan struct{} {
	s.nmu.Lock()
	defer s.nmu.Unlock()
	return s.notify
}

// ErrInterrupted ends a blocked host call when the run's context is done
// or the system is closed; Run reports it as an error, not a trap.
var ErrInterrupted = errors.New("interrupted")

// wait blocks until ch is closed, the timer (if any) fires or the context
// is done; it panics with the context's error in the last case.
func (s *System) wait(ctx context.Context, ch <-chan struct{}, timer <-chan time.Time) {
	select {
	case <-ch:
	case <-timer:
	case <-ctx.Done():
		panic(fmt.Errorf("%w: %w", ErrInterrupted, context.Cause(ctx)))
	case <-s.closed:
		panic(fmt.Errorf("%w: the keep is shutting down", ErrInterrupted))
	}
}

// full reports whether the descriptors open and the connections that
// linger after their close have reached the open-file limit.
func (s *System) full() bool {
	return s.nopen+int(s.lingering.Load()) >= s.max
}

// alloc places d in the lowest free slot.
func (s *System) alloc(d *fdesc) (uint32, Errno) {
	if s.full() {
		return 0, errMfile
	}
	s.nopen++
	for i, x := range s.fds {
		if x == nil {
			s.fds[i] = d
			return uint32(i), errSuccess
		}
	}
	s.fds = append(s.fds, d)
	return uint32(len(s.fds) - 1), errSuccess
}

func (s *System) get(fd uint32) (*fdesc, Errno) {
	if uint64(fd) >= uint64(len(s.fds)) || s.fds[fd] == nil {
		return nil, errBadf
	}
	return s.fds[fd], errSuccess
}

// HostModule returns the wasi_snapshot_preview1 host module bound to s.
func (s *System) HostModule() engine.HostModule {
	funcs := make([]engine.HostFunc, 0, len(functions))
	for _, f := range functions {
		f := f
		hf := engine.HostFunc{Name: f.name, Params: f.params, Results: []engine.ValueType{engine.I32}}
		if f.name == "proc_exit" {
			hf.Results = nil
		}
		hf.Fn = func(ctx context.Context, c engine.Caller, stack []uint64) {
			errno := s.call(ctx, c, f.fn, stack)
			if len(hf.Results) > 0 {
				stack[0] = uint64(errno)
			}
		}
		funcs = append(funcs, hf)
	}
	return engine.HostModule{Name: ModuleName, Funcs: funcs}
}

// Provides reports whether the host module exports a function name.
func Provides(name string) bool {
	for _, f := range functions {
		if f.name == name {
			return true
		}
	}
	return false
}

// call runs fn, turning a fault (out-of-range pointer) into EFAULT and an
// errno panic into that errno.
func (s *System) call(ctx context.Context, c engine.Caller, fn hostFn, stack []uint64) (errno Errno) {
	defer func() {
		if r := recover(); r != nil {
			switch r := r.(type) {
			case fault:
				errno = errFault
			case Errno:
				errno = r
			default:
				panic(r)
			}
		}
	}()
	return fn(s, ctx, c, mem(c.Memory()), stack)
}

type hostFn func(s *System, ctx context.Context, c engine.Caller, m mem, p []uint64) Errno

type function struct {
	name   string
	params []engine.ValueType
	fn     hostFn
}

const (
	i32 = engine.I32
	i64 = engine.I64
)

func sig(ts ...engine.ValueType) []engine.ValueType { return ts }

// functions is the whole of wasi_snapshot_preview1, in the witx order.
var functions = []function{
	{"args_get", sig(i32, i32), argsGet},
	{"args_sizes_get", sig(i32, i32), argsSizesGet},
	{"environ_get", sig(i32, i32), environGet},
	{"environ_sizes_get", sig(i32, i32), environSizesGet},
	{"clock_res_get", sig(i32, i32), clockResGet},
	{"clock_time_get", sig(i32, i64, i32), clockTimeGet},
	{"fd_advise", sig(i32, i64, i64, i32), fdAdvise},
	{"fd_allocate", sig(i32, i64, i64), fdAllocate},
	{"fd_close", sig(i32), fdClose},
	{"fd_datasync", sig(i32), fdDatasync},
	{"fd_fdstat_get", sig(i32, i32), fdFdstatGet},
	{"fd_fdstat_set_flags", sig(i32, i32), fdFdstatSetFlags},
	{"fd_fdstat_set_rights", sig(i32, i64, i64), fdFdstatSetRights},
	{"fd_filestat_get", sig(i32, i32), fdFilestatGet},
	{"fd_filestat_set_size", sig(i32, i64), fdFilestatSetSize},
	{"fd_filestat_set_times", sig(i32, i64, i64, i32), fdFilestatSetTimes},
	{"fd_pread", sig(i32, i32, i32, i64, i32), fdPread},
	{"fd_prestat_get", sig(i32, i32), fdPrestatGet},
	{"fd_prestat_dir_name", sig(i32, i32, i32), fdPrestatDirName},
	{"fd_pwrite", sig(i32, i32, i32, i64, i32), fdPwrite},
	{"fd_read", sig(i32, i32, i32, i32), fdRead},
	{"fd_readdir", sig(i32, i32, i32, i64, i32), fdReaddir},
	{"fd_renumber", sig(i32, i32), fdRenumber},
	{"fd_seek", sig(i32, i64, i32, i32), fdSeek},
	{"fd_sync", sig(i32), fdSync},
	{"fd_tell", sig(i32, i32), fdTell},
	{"fd_write", sig(i32, i32, i32, i32), fdWrite},
	{"path_create_directory", sig(i32, i32, i32), pathCreateDirectory},
	{"path_filestat_get", sig(i32, i32, i32, i32, i32), pathFilestatGet},
	{"path_filestat_set_times", sig(i32, i32, i32, i32, i64, i64, i32), pathFilestatSetTimes},
	{"path_link", sig(i32, i32, i32, i32, i32, i32, i32), pathLink},
	{"path_open", sig(i32, i32, i32, i32, i32, i64, i64, i32, i32), pathOpen},
	{"path_readlink", sig(i32, i32, i32, i32, i32, i32), pathReadlink},
	{"path_remove_directory", sig(i32, i32, i32), pathRemoveDirectory},
	{"path_rename", sig(i32, i32, i32, i32, i32, i32), pathRename},
	{"path_symlink", sig(i32, i32, i32, i32, i32), pathSymlink},
	{"path_unlink_file", sig(i32, i32, i32), pathUnlinkFile},
	{"poll_oneoff", sig(i32, i32, i32, i32), pollOneoff},
	{"proc_exit", sig(i32), procExit},
	{"proc_raise", sig(i32), procRaise},
	{"sched_yield", sig(), schedYield},
	{"random_get", sig(i32, i32), randomGet},
	{"sock_accept", sig(i32, i32, i32), sockAccept},
	{"sock_recv", sig(i32, i32, i32, i32, i32, i32), sockRecv},
	{"sock_send", sig(i32, i32, i32, i32, i32), sockSend},
	{"sock_shutdown", sig(i32, i32), sockShutdown},
}
