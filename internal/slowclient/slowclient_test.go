package slowclient

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// TestTrickleUntilHungUp: the trickled bytes arrive one by one, and once
// the server side closes, HungUp returns and Trickle stops.
func TestTrickleUntilHungUp(t *testing.T) {
	client, server := net.Pipe()
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		Trickle(client, time.Millisecond, make(chan struct{}))
	}()
	br := bufio.NewReader(server)
	for range 3 {
		if b, err := br.ReadByte(); err != nil || b != ' ' {
			t.Fatalf("read %q, %v", b, err)
		}
	}
	server.Close()
	<-stopped // the next write fails
	HungUp(t, client, client)
}
