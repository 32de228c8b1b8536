package host

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Retention defaults: finished keeps (folder, record and events) are kept
// for a week, and at most the newest 100 of them.
const (
	DefaultRetainKeeps = 100
	DefaultRetainFor   = 7 * 24 * time.Hour
)

// pruneEvery is how often the agent looks for finished keeps past their
// age, besides after each keep's end.
const pruneEvery = time.Hour

// ErrKeepLive: a keep that still runs cannot be removed unless it is
// stopped first.
var ErrKeepLive = errors.New("the keep is still running")

// removeKeep deletes a finished keep: its folder, then its record and
// events. A live keep is refused with ErrKeepLive, or stopped first when
// stop is set.
func (a *Agent) removeKeep(ctx context.Context, id string, stop bool) error {
	a.pruneMu.Lock()
	defer a.pruneMu.Unlock()
	a.mu.Lock()
	l := a.live[id]
	a.mu.Unlock()
	if l != nil {
		if !stop {
			return ErrKeepLive
		}
		a.stop(l, StateStopped, "stopped to be removed")
		if l.pid == 0 {
			return ErrKeepLive // still being created: nothing to stop yet
		}
	}
	r, err := a.st.keep(ctx, id)
	if err != nil {
		return err
	}
	if !Terminal(r.State) {
		return ErrKeepLive
	}
	return a.deleteKeep(id)
}

func (a *Agent) deleteKeep(id string) error {
	if b, err := hex.DecodeString(id); err != nil || len(b) != 6 {
		return fmt.Errorf("keep %q: not a keep id", id)
	}
	// The record first (nothing happens after the agent closed); a folder
	// left without one is swept at the next start (sweepOrphans).
	if err := a.write(func() error { return a.st.deleteKeep(id) }); err != nil {
		return fmt.Errorf("keep %s: %w", id, err)
	}
	if err := os.RemoveAll(filepath.Join(a.cfg.StateDir, "keeps", id)); err != nil {
		return fmt.Errorf("keep %s: %w", id, err)
	}
	return nil
}

// sweepOrphans removes keep folders that have no record (their removal
// was cut short). It runs in New, before any keep is created.
func (a *Agent) sweepOrphans() {
	dir := filepath.Join(a.cfg.StateDir, "keeps")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if b, err := hex.DecodeString(e.Name()); err != nil || len(b) != 6 || !e.IsDir() {
			continue
		}
		if _, err := a.st.keep(context.Background(), e.Name()); errors.Is(err, errNotFound) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
			a.cfg.Logf("keep folder %s removed: it has no record", e.Name())
		}
	}
}

// prune removes finished keeps beyond the newest RetainKeeps and those
// that ended more than RetainFor ago.
func (a *Agent) prune() {
	a.pruneMu.Lock()
	defer a.pruneMu.Unlock()
	select {
	case <-a.closing:
		return
	default:
	}
	rows, err := a.st.keeps(context.Background(), `WHERE state IN (?, ?, ?)`, StateExited, StateFailed, StateStopped)
	if err != nil {
		a.cfg.Logf("retention: %v", err)
		return
	}
	// Newest end first.
	ended := func(r *keepRow) time.Time {
		if r.Ended != nil {
			return *r.Ended
		}
		return r.Created
	}
	sort.SliceStable(rows, func(i, j int) bool { return ended(rows[i]).After(ended(rows[j])) })
	cutoff := time.Now().Add(-a.cfg.RetainFor)
	for i, r := range rows {
		why := ""
		switch {
		case i >= a.cfg.RetainKeeps:
			why = fmt.Sprintf("more than %d finished keeps", a.cfg.RetainKeeps)
		case ended(r).Before(cutoff):
			why = fmt.Sprintf("ended more than %v ago", a.cfg.RetainFor)
		default:
			continue
		}
		if err := a.deleteKeep(r.ID); err != nil {
			a.cfg.Logf("retention: %v", err)
			continue
		}
		a.cfg.Logf("keep %s removed (%s)", r.ID, why)
	}
}

// pruneLoop prunes every pruneEvery until the agent closes.
func (a *Agent) pruneLoop() {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	for {
		select {
		case <-a.closing:
			return
		case <-t.C:
			a.prune()
		}
	}
}

func (a *Agent) removeKeepAPI(w http.ResponseWriter, r *http.Request) {
	k := a.lookup(w, r)
	if k == nil {
		return
	}
	err := a.removeKeep(r.Context(), k.ID, r.URL.Query().Get("stop") != "")
	switch {
	case errors.Is(err, ErrKeepLive):
		writeError(w, http.StatusConflict, "keep %s is %s: stop it first, or remove it with stop=1", k.ID, k.State)
	case err != nil:
		writeError(w, http.StatusInternalServerError, "%v", err)
	default:
		a.cfg.Logf("keep %s removed through the API", k.ID)
		w.WriteHeader(http.StatusNoContent)
	}
}
