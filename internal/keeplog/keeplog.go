// Package keeplog is a keep's output file: the one path by which a keep's
// log lines (and a detached workload's output when its config says
// detached_output = "host") reach the host, and which outlives the host
// agent.
//
// The writer appends to the file in the keep's state folder: a process
// keep has it as its stdout and stderr (the agent opens it and the keep
// inherits the descriptor), and a VM keep's output channel is written into
// it by whatever receives that channel (a QEMU chardev file backend, or the
// agent). Readers follow the file from an offset they keep. A host agent
// that dies loses nothing: the keep goes on appending, and the next agent
// follows from the offset the previous one recorded. A pipe, by contrast,
// has only the reader that was there when the keep started.
//
// The file is bounded: Limited stops a writer at its limit, and a
// follower can refuse to read past it.
package keeplog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// FileName is the output file inside a keep's folder.
const FileName = "keep.log"

// Path returns the output file of the keep whose folder is dir.
func Path(dir string) string { return filepath.Join(dir, FileName) }

// Create opens the keep's output file for appending, creating it (mode
// 0600). Every write goes to the file's end, whoever else appends.
func Create(dir string) (*os.File, error) {
	return os.OpenFile(Path(dir), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
}

// ErrLimit: the output file reached its limit.
var ErrLimit = errors.New("keep output limit reached")

// Limited is a writer that passes at most Max bytes (counting From bytes
// already in the file): of the write that does not fit it passes the whole
// lines that do, then calls OnLimit once; writes after that fail with
// ErrLimit. It is safe for concurrent use.
type Limited struct {
	W       io.Writer
	Max     int64
	From    int64 // bytes already written (the file's size when opened)
	OnLimit func()

	mu   sync.Mutex
	full bool
}

func (l *Limited) Write(p []byte) (int, error) {
	l.mu.Lock()
	if l.full {
		l.mu.Unlock()
		return 0, ErrLimit
	}
	left := l.Max - l.From
	if int64(len(p)) <= left {
		n, err := l.W.Write(p)
		l.From += int64(n)
		l.mu.Unlock()
		return n, err
	}
	// What fits, cut after its last newline: the file ends with whole
	// lines, and the writer's last word (OnLimit) starts a line of its own.
	cut := p[:max(left, 0)]
	cut = cut[:bytes.LastIndexByte(cut, '\n')+1]
	n, err := l.W.Write(cut)
	l.From += int64(n)
	l.full = true
	l.mu.Unlock()
	if l.OnLimit != nil {
		l.OnLimit()
	}
	if err == nil {
		err = ErrLimit
	}
	return n, err
}

// Follow options.
type FollowOptions struct {
	// MaxLine cuts longer lines (the rest up to the newline is dropped);
	// 0 = 4096.
	MaxLine int
	// Ended is closed once nothing will be appended any more (the keep
	// ended): Follow then reads to the end, passes a last line without
	// its newline if there is one, and returns nil.
	Ended <-chan struct{}
	// Poll is the longest wait between looks at an idle file; 0 = 100ms.
	Poll time.Duration
}

// Follow reads the file at path from offset and calls fn with each line
// (without its newline) and the offset just after it, which is where a
// later Follow resumes. It waits for more while the writer may still
// append, and returns when o.Ended is closed and the file is read, when
// ctx is done (ctx.Err()), or when fn fails (its error). A file that does
// not exist yet is waited for.
func Follow(ctx context.Context, path string, offset int64, o FollowOptions, fn func(line []byte, next int64) error) error {
	maxLine := o.MaxLine
	if maxLine <= 0 {
		maxLine = 4096
	}
	poll := o.Poll
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 32<<10)
	var line []byte // the current line, cut at maxLine
	lineStart := offset
	skipping := false // the current line was cut: drop up to its newline
	wait := 10 * time.Millisecond
	for {
		ended := false
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-o.Ended:
			ended = true
		default:
		}
		if f == nil {
			var err error
			if f, err = os.Open(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		progressed := false
		for f != nil {
			n, err := f.ReadAt(buf, offset)
			chunk := buf[:n]
			for len(chunk) > 0 {
				i := bytes.IndexByte(chunk, '\n')
				part := chunk
				if i >= 0 {
					part = chunk[:i]
				}
				if !skipping {
					room := maxLine - len(line)
					if len(part) > room {
						line = append(line, part[:room]...)
						skipping = true
					} else {
						line = append(line, part...)
					}
				}
				if i < 0 {
					offset += int64(len(chunk))
					break
				}
				offset += int64(i + 1)
				chunk = chunk[i+1:]
				if err := fn(line, offset); err != nil {
					return err
				}
				line, skipping, lineStart = line[:0], false, offset
			}
			progressed = progressed || n > 0
			if err == io.EOF || n == 0 {
				break
			}
			if err != nil {
				return err
			}
		}
		if ended {
			if len(line) > 0 || offset > lineStart {
				return fn(line, offset)
			}
			return nil
		}
		if progressed {
			wait = 10 * time.Millisecond
		} else {
			wait = min(2*wait, poll)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-o.Ended:
		case <-time.After(wait):
		}
	}
}
