package policy

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Store holds the snapshot in force and reloads it from its two files.
// Readers call Current for each request, so a reload (a revocation) takes
// effect on the very next request.
type Store struct {
	policyFile, measurementsFile string
	cur                          atomic.Pointer[Snapshot]
	mu                           sync.Mutex // serialises reloads
	sum                          [32]byte   // of the files behind cur
}

// Open loads both files; it fails if either is bad.
func Open(policyFile, measurementsFile string) (*Store, error) {
	s := &Store{policyFile: policyFile, measurementsFile: measurementsFile}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Current returns the snapshot in force.
func (s *Store) Current() *Snapshot { return s.cur.Load() }

// Reload reads both files again. On error the snapshot in force stays.
// changed is false when the files are byte-for-byte what is in force.
func (s *Store) Reload() (changed bool, err error) {
	pb, mb, sum, err := s.read()
	if err != nil {
		return false, err
	}
	return s.apply(pb, mb, sum)
}

func (s *Store) read() (pb, mb []byte, sum [32]byte, err error) {
	if pb, err = os.ReadFile(s.policyFile); err != nil {
		return nil, nil, sum, fmt.Errorf("policy: %w", err)
	}
	if mb, err = os.ReadFile(s.measurementsFile); err != nil {
		return nil, nil, sum, fmt.Errorf("measurement database: %w", err)
	}
	return pb, mb, fileSum(pb, mb), nil
}

func (s *Store) apply(pb, mb []byte, sum [32]byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.Load() != nil && sum == s.sum {
		return false, nil
	}
	snap, err := parse(s.policyFile, pb, s.measurementsFile, mb)
	if err != nil {
		return false, err
	}
	s.cur.Store(snap)
	s.sum = sum
	return true, nil
}

func (s *Store) inForce(sum [32]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return sum == s.sum
}

func fileSum(pb, mb []byte) [32]byte {
	h := sha256.New()
	h.Write(pb)
	h.Write([]byte{0})
	h.Write(mb)
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Watch reloads when the files' contents change, checking every interval
// until ctx ends. The files are small, so they are read and hashed, which
// also catches edits that keep the size and modification time; a change is
// applied once the contents are the same at two checks in a row, so that a
// file caught half-written by an editor is not loaded. report is called
// with nil after each successful reload, and with the error (once per
// distinct error) when a bad edit leaves the old snapshot in force.
func (s *Store) Watch(ctx context.Context, interval time.Duration, report func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastErr string
	var pending [32]byte
	fail := func(err error) {
		if err.Error() != lastErr && report != nil {
			report(err)
		}
		lastErr = err.Error()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pb, mb, sum, err := s.read()
		switch {
		case err != nil:
			fail(err)
			continue
		case s.inForce(sum):
			pending = [32]byte{}
			continue
		case sum != pending:
			pending = sum // settle for one interval
			continue
		}
		changed, err := s.apply(pb, mb, sum)
		switch {
		case err != nil:
			fail(err)
		case changed:
			lastErr = ""
			if report != nil {
				report(nil)
			}
		}
	}
}
