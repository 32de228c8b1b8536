package console

import (
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/tee"
)

// TestBackendWords checks that the page has a label and a description for
// every backend tee knows, and that each label starts with the backend's
// name, which the page's users type elsewhere (`--backend`).
func TestBackendWords(t *testing.T) {
	for _, name := range tee.Names() {
		w, ok := backendWords[name]
		if !ok {
			t.Errorf("backend %q has no words for the page", name)
			continue
		}
		if !strings.HasPrefix(w.label, name+": ") || w.description == "" {
			t.Errorf("backend %q: label %q, description %q", name, w.label, w.description)
		}
	}
	if len(backendWords) != len(tee.Names()) {
		t.Errorf("%d backends have words, tee knows %d", len(backendWords), len(tee.Names()))
	}
}
