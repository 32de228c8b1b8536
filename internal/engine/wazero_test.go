package engine

import (
	goruntime "runtime"
	"runtime/metrics"
	"testing"
)

// TestGCNear: right after a collection the heap is far from its goal (no
// collection before the guest); once more than half of the room to the
// goal is allocated, one is near.
func TestGCNear(t *testing.T) {
	goruntime.GC()
	if gcNear() {
		t.Fatal("a collection is near right after one")
	}
	s := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	room := s[0].Value.Uint64() - s[1].Value.Uint64()
	var keep [][]byte
	for n := uint64(0); n < room*6/10; n += 64 << 10 {
		keep = append(keep, make([]byte, 64<<10))
	}
	if !gcNear() {
		t.Fatalf("no collection near with %d of %d bytes of room allocated", len(keep)*64<<10, room)
	}
	goruntime.KeepAlive(keep)
}
