package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
	"github.com/castellan-dev/castellan/internal/wasi"
)

// Environment variables of a keep with `replicas` in its config.
const (
	EnvInstance = "CASTELLAN_INSTANCE" // this instance, 0 to CASTELLAN_REPLICAS-1
	EnvReplicas = "CASTELLAN_REPLICAS" // how many instances the keep runs
)

// errReplicaEnded is why the other instances are stopped when one ends.
var errReplicaEnded = errors.New("another instance of the workload ended")

// runReplicas runs n instances of the program in this keep, each with its
// own linear memory and descriptor table, sharing each listening socket
// (one accept loop per socket hands connections to whichever instance
// accepts first), the certificate and the output. Only instance 0 reads
// stdin; the others read EOF. Writes to stdout and stderr are whole
// fd_write calls, interleaved between instances in the order they happen.
// The keep ends when the first instance ends: the others are stopped as a
// keep is on a signal, and the first one's outcome is the keep's.
func (p *Program) runReplicas(ctx context.Context, o Options, cfg *config.Config, n int) (int, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ls := &sharedListeners{m: map[string]*sharedListener{}}
	defer ls.close()
	o.Stdout, o.Stderr = lockWriter(o.Stdout), lockWriter(o.Stderr)
	systems := make([]*wasi.System, 0, n)
	for i := range n {
		oi := o
		if i > 0 {
			// Instance 0 alone reads stdin and reports the bound addresses.
			oi.Stdin, oi.OnListen = nil, nil
		}
		sys, err := p.system(ctx, oi, cfg, i, ls.listen)
		if err != nil {
			for _, s := range systems {
				s.Close()
			}
			return 0, err
		}
		systems = append(systems, sys)
	}
	type result struct {
		code int
		err  error
	}
	first := make(chan result, n)
	var wg sync.WaitGroup
	for _, sys := range systems {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, err := p.runSystem(ctx, sys, o, cfg)
			first <- result{code, err}
			cancel(errReplicaEnded)
		}()
	}
	r := <-first
	wg.Wait()
	return r.code, r.err
}

// sharedListeners binds each listen entry once for all the instances.
type sharedListeners struct {
	mu sync.Mutex
	m  map[string]*sharedListener
}

func (s *sharedListeners) listen(f config.File) (net.Listener, error) {
	addr := net.JoinHostPort(f.Addr, strconv.Itoa(int(f.Port)))
	key := f.Name + "\x00" + addr
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.m[key]
	if sl == nil {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, err
		}
		sl = &sharedListener{ln: ln, conns: make(chan net.Conn), done: make(chan struct{}), failed: make(chan struct{})}
		s.m[key] = sl
		sl.wg.Add(1)
		go sl.run()
	}
	return &instanceListener{sl: sl, closed: make(chan struct{})}, nil
}

// close closes every socket and waits for the accept loops.
func (s *sharedListeners) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.m {
		close(sl.done)
		sl.ln.Close()
		sl.wg.Wait()
	}
}

// sharedListener is one bound socket and its accept loop.
type sharedListener struct {
	ln     net.Listener
	conns  chan net.Conn // accepted, handed to one instance
	done   chan struct{} // closed when the keep ends
	failed chan struct{} // closed, with err set, when accepting failed for good
	err    error
	wg     sync.WaitGroup
}

func (sl *sharedListener) run() {
	defer sl.wg.Done()
	var backoff time.Duration
	for {
		c, err := sl.ln.Accept()
		if err != nil {
			select {
			case <-sl.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) {
				// Out of host descriptors or a transient error: back off
				// as net/http does, then try again.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(backoff):
					continue
				case <-sl.done:
					return
				}
			}
			sl.err = fmt.Errorf("accept: %w", err)
			close(sl.failed)
			return
		}
		backoff = 0
		select {
		case sl.conns <- c:
		case <-sl.done:
			c.Close()
			return
		}
	}
}

// instanceListener is one instance's view of a shared socket: closing it
// stops this instance accepting, not the others.
type instanceListener struct {
	sl     *sharedListener
	once   sync.Once
	closed chan struct{}
}

var _ net.Listener = (*instanceListener)(nil)

func (l *instanceListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.sl.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.sl.failed:
		return nil, l.sl.err
	case <-l.sl.done:
		return nil, net.ErrClosed
	}
}

func (l *instanceListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *instanceListener) Addr() net.Addr { return l.sl.ln.Addr() }

// lockWriter makes w safe for the instances' concurrent writes (nil stays
// nil: output discarded).
func lockWriter(w io.Writer) io.Writer {
	if w == nil {
		return nil
	}
	return &lockedWriter{w: w}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
