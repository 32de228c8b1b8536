package host

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/delivery"
	"github.com/castellan-dev/castellan/internal/fixtures"
)

// keepFolders lists the keep folders in the agent's state.
func (h *harness) keepFolders() []string {
	ents, _ := os.ReadDir(filepath.Join(h.stateDir, "keeps"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func notFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// TestRetention: finished keeps beyond the newest RetainKeeps, and those
// that ended more than RetainFor ago, lose their folder, record and events;
// live keeps and the newest finished ones stay.
func TestRetention(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.RetainKeeps = 3; c.RetainFor = time.Hour })
	art := artifact(t, fixtures.C(t, "hello"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var ids []string
	for range 5 {
		k, _, _, _, err := h.deploy(ctx, "nil", art, &delivery.InsecureVerifier{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		h.waitEnded(k.ID)
		ids = append(ids, k.ID)
	}
	live := h.create(t, "nil", Limits{})
	h.agent.prune() // as after each end (asynchronously) and every hour
	for i, id := range ids {
		_, err := h.client.Get(ctx, id)
		if kept := i >= 2; kept != (err == nil) {
			t.Errorf("keep %d (%s): kept %v, Get: %v", i, id, kept, err)
		}
		if i < 2 && !notFound(h.client.Events(ctx, id, false, func(Event) {})) {
			t.Errorf("keep %s: its events are still served", id)
		}
	}
	want := append([]string{live.ID}, ids[2:]...)
	sort.Strings(want)
	if got := h.keepFolders(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("keep folders %v, want %v", got, want)
	}
	// Age: the oldest kept one "ended" two hours ago.
	if _, err := h.agent.st.db.Exec(`UPDATE keeps SET ended = ? WHERE id = ?`, time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339Nano), ids[2]); err != nil {
		t.Fatal(err)
	}
	h.agent.prune()
	if _, err := h.client.Get(ctx, ids[2]); !notFound(err) {
		t.Errorf("a keep that ended 2h ago is kept with retention 1h: %v", err)
	}
	if k, err := h.client.Get(ctx, live.ID); err != nil || k.State != StateReady {
		t.Errorf("the live keep: %v %+v", err, k)
	}
}

// TestRemove: a finished keep is removed with its folder; a live one is
// refused unless stop is asked, which stops it first; unknown ids are 404.
func TestRemove(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	live := h.create(t, "nil", Limits{})
	err := h.client.Remove(ctx, live.ID, false)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "is ready: stop it first") {
		t.Fatalf("removing a live keep: %v", err)
	}
	if err := syscall.Kill(live.PID, 0); err != nil {
		t.Fatalf("the refused removal touched the keep: %v", err)
	}
	if err := h.client.Remove(ctx, live.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Get(ctx, live.ID); !notFound(err) {
		t.Errorf("removed keep still served: %v", err)
	}
	if err := syscall.Kill(-live.PID, 0); err == nil {
		t.Errorf("the removed keep's process group %d still runs", live.PID)
	}
	done := h.create(t, "nil", Limits{})
	if _, err := h.client.Stop(ctx, done.ID); err != nil {
		t.Fatal(err)
	}
	if err := h.client.Remove(ctx, done.ID, false); err != nil {
		t.Fatal(err)
	}
	if got := h.keepFolders(); len(got) != 0 {
		t.Errorf("keep folders left: %v", got)
	}
	if err := h.client.Remove(ctx, "0123456789ab", false); !notFound(err) {
		t.Errorf("unknown keep: %v", err)
	}
	// A folder whose record is gone (a removal cut short) is swept when
	// the agent starts.
	orphan := filepath.Join(h.stateDir, "keeps", "aaaaaaaaaaaa")
	os.MkdirAll(orphan, 0o700)
	h.stop()
	h.start()
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan keep folder kept: %v", err)
	}
}
