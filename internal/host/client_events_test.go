package host

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestClientEventsBounded: the client reads an agent's event stream a
// line at a time and refuses an event without end, as a hostile agent
// could send (deploy --host and the console with --host read it).
func TestClientEventsBounded(t *testing.T) {
	for _, c := range []struct {
		name, body, want string
		events           int
	}{
		{"events", `{"seq":1,"keep":"k","type":"log","message":"a"}` + "\n\n" + `{"seq":2,"keep":"k","type":"ended","message":"b"}` + "\n", "", 2},
		{"an event without end", `{"seq":1,"keep":"k","type":"log","message":"` + strings.Repeat("x", 8<<20), "an event of more than 65536 bytes", 0},
		{"not json", "{\n", "host agent events:", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, c.body)
			}))
			defer srv.Close()
			cl, err := NewClient(srv.URL, "token", nil)
			if err != nil {
				t.Fatal(err)
			}
			cl.hc = srv.Client()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			n := 0
			err = cl.Events(ctx, "k", false, func(Event) { n++ })
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) || n != c.events {
				t.Fatalf("got %v and %d events, want %q and %d", err, n, c.want, c.events)
			}
		})
	}
}
