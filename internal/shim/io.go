//go:build linux

package shim

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	eventsapi "github.com/containerd/containerd/api/services/ttrpc/events/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"

	"github.com/castellan-dev/castellan/internal/keep"
	"github.com/castellan-dev/castellan/internal/keep/qemu"
)

func openFifoWrite(ctx context.Context, path string) (io.WriteCloser, error) {
	return fifo.OpenFifo(ctx, path, syscall.O_WRONLY, 0)
}

// openOutput opens a container's stdout or stderr: a FIFO containerd
// reads (ctr, and the CRI plugin which writes the pod's log file), a
// file:// URI (ctr --log-uri), or nothing.
func openOutput(ctx context.Context, p string) (io.WriteCloser, error) {
	switch {
	case p == "":
		return nopCloser{io.Discard}, nil
	case strings.HasPrefix(p, "file://"):
		u, err := url.Parse(p)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return nil, err
		}
		return os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	case strings.Contains(p, "://"):
		return nil, fmt.Errorf("%s: only FIFOs and file:// URIs are supported", p)
	}
	// The FIFO opens in the background once containerd reads it; ctx
	// must outlive that (its end closes a FIFO not yet open).
	return fifo.OpenFifo(ctx, p, syscall.O_WRONLY, 0)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// readOptions reads the runtime handler's options: containerd passes
// runtimeoptions.v1.Options (ConfigPath, or ConfigBody, the handler's
// options table as TOML) to a shim whose options type it does not know.
// No options: a process keep with the nil backend.
func readOptions(a *anypb.Any) (*Options, error) {
	if a == nil || len(a.Value) == 0 {
		return ParseOptions(nil)
	}
	var ro runtimeoptions.Options
	if err := proto.Unmarshal(a.Value, &ro); err != nil {
		return nil, fmt.Errorf("%s: %w", a.TypeUrl, err)
	}
	if ro.ConfigPath != "" {
		b, err := os.ReadFile(ro.ConfigPath)
		if err != nil {
			return nil, err
		}
		o, err := ParseOptions(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ro.ConfigPath, err)
		}
		return o, nil
	}
	return ParseOptions(ro.ConfigBody)
}

// newLauncher makes the Launcher of the options' keep kind (tests replace
// it to start keeps from the test binary).
var newLauncher = func(o *Options) (keep.Launcher, error) {
	if o.Keep == keep.KindVM {
		return &qemu.VM{Image: o.KeepImage, Firmware: o.Firmware}, nil
	}
	return &keep.Process{CacheDir: o.KeepCacheDir}, nil
}

// publisher forwards task events to containerd (its ttrpc socket,
// $TTRPC_ADDRESS): the CRI plugin learns of a container's exit this way.
type publisher struct {
	namespace, address string
	mu                 sync.Mutex
	client             *ttrpc.Client
}

func newPublisher(namespace, address string) *publisher {
	return &publisher{namespace: namespace, address: strings.TrimPrefix(address, "unix://")}
}

func (p *publisher) publish(topic string, msg proto.Message) {
	if p.address == "" {
		return
	}
	b, err := proto.Marshal(msg)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client == nil {
		conn, err := (&netDialer{}).dial(p.address)
		if err != nil {
			return
		}
		p.client = ttrpc.NewClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = ttrpc.WithMetadata(ctx, ttrpc.MD{"containerd-namespace-ttrpc": []string{p.namespace}})
	// containerd 1.6 resolves event types by their bare proto name.
	ev := &anypb.Any{TypeUrl: string(msg.ProtoReflect().Descriptor().FullName()), Value: b}
	if _, err := eventsapi.NewTTRPCEventsClient(p.client).Forward(ctx, &eventsapi.ForwardRequest{Envelope: &types.Envelope{
		Timestamp: timestamppb.Now(), Namespace: p.namespace, Topic: topic, Event: ev}}); err != nil {
		p.client.Close()
		p.client = nil
	}
}

func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.client != nil {
		p.client.Close()
	}
}

func (o *Options) launcher() (keep.Launcher, error) {
	l, err := newLauncher(o)
	if err != nil {
		return nil, err
	}
	if err := l.Provision(); err != nil {
		return nil, err
	}
	return l, nil
}
