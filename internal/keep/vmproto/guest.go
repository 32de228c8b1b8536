package vmproto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Guest is the guest's side of the channel (castellan as PID 1 in a VM
// keep).
type Guest struct {
	conn io.ReadWriter
	wmu  sync.Mutex

	keepEnd, ourEnd net.Conn // the keep's delivery stream and our end of it
	helloOnce       sync.Once
	outDone         chan struct{} // the keep's bytes have all been framed
	inErr           chan error    // the host broke the protocol
	relay           *relayMux     // connections to the secret service
	helloSent       chan struct{} // closed once the hello went

	protoMu  sync.Mutex
	protoErr error // the host broke the protocol (set before the stream closes)
}

// Accept sends the guest's version and reads the host's launch request.
// It blocks until the host speaks: the host bounds a VM's life.
func Accept(conn io.ReadWriter) (*Guest, *LaunchRequest, error) {
	g := &Guest{conn: conn, outDone: make(chan struct{}), inErr: make(chan error, 1), helloSent: make(chan struct{})}
	g.relay = newRelayMux(true, g.send)
	if err := g.send(FrameVersion, []byte(Version)); err != nil {
		return nil, nil, fmt.Errorf("vm channel: %w", err)
	}
	typ, p, err := readFrame(conn)
	if err != nil {
		return nil, nil, fmt.Errorf("vm channel: reading the launch request: %w", err)
	}
	if typ != FrameLaunch {
		return nil, nil, fmt.Errorf("%w: %q frame, want the launch request", ErrFrame, typ)
	}
	req, err := ParseLaunchRequest(p)
	if err != nil {
		return nil, nil, err
	}
	g.keepEnd, g.ourEnd = net.Pipe()
	return g, req, nil
}

// Stream is the keep's end of the delivery byte stream; bytes flow once
// the hello is sent. An end of data from the host closes it (the client
// went away).
func (g *Guest) Stream() net.Conn { return g.keepEnd }

// Hello sends the keep's hello and starts relaying the delivery stream.
func (g *Guest) Hello(hello []byte) error {
	if len(hello) == 0 {
		return errors.New("vm channel: empty hello")
	}
	err := errors.New("vm channel: hello sent twice")
	g.helloOnce.Do(func() {
		if err = g.send(FrameHello, hello); err != nil {
			close(g.outDone)
			return
		}
		close(g.helloSent)
		go g.pumpOut()
		go g.pumpIn()
	})
	return err
}

// DialSecretService opens a connection to the secret service the host
// was configured with (the launch request's SecretServiceURL), relayed by
// the host: the caller runs TLS over it, to that URL's host name. It
// works after the hello; the host refuses it when it has no service.
func (g *Guest) DialSecretService(ctx context.Context) (net.Conn, error) {
	select {
	case <-g.helloSent:
	default:
		return nil, errors.New("vm channel: a connection to the secret service before the hello")
	}
	return g.relay.open(ctx)
}

// ProtocolErrors reports the host breaking the protocol after the hello
// (at most one error).
func (g *Guest) ProtocolErrors() <-chan error { return g.inErr }

// Log sends one log line (cut to MaxLog bytes).
func (g *Guest) Log(line string) error {
	if len(line) > MaxLog {
		line = line[:MaxLog]
	}
	return g.send(FrameLog, []byte(line))
}

// State sends a state change.
func (g *Guest) State(s string) error { return g.send(FrameState, []byte(s)) }

// Exit closes the delivery stream, waits until its last bytes are framed
// and sends the exit status: the guest's last frame. Once the host broke
// the protocol, the status is that failure whatever x says: the keep's
// stream ended because of it, and what the keep made of its end (no
// client, a cut delivery) must not hide the cause.
func (g *Guest) Exit(x Exit) error {
	g.protoMu.Lock()
	if g.protoErr != nil {
		x = Exit{State: StateFailed, Reason: g.protoErr.Error()}
	}
	g.protoMu.Unlock()
	if g.keepEnd != nil {
		g.keepEnd.Close()
		g.helloOnce.Do(func() { close(g.outDone) })
		<-g.outDone
	}
	b, err := marshalExit(x)
	if err != nil {
		return err
	}
	return g.send(FrameExit, b)
}

func marshalExit(x Exit) ([]byte, error) {
	if len(x.Reason) > MaxExit/2 {
		x.Reason = x.Reason[:MaxExit/2]
	}
	b, err := json.Marshal(x)
	if err != nil {
		return nil, err
	}
	if _, err := ParseExit(b); err != nil {
		return nil, err
	}
	return b, nil
}

func (g *Guest) send(typ byte, p []byte) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	return writeFrame(g.conn, typ, p)
}

// pumpOut frames the keep's bytes to the host, then an end of data.
func (g *Guest) pumpOut() {
	defer close(g.outDone)
	buf := make([]byte, MaxData)
	for {
		n, err := g.ourEnd.Read(buf)
		if n > 0 {
			if g.send(FrameData, buf[:n]) != nil {
				g.ourEnd.Close()
				return
			}
		}
		if err != nil {
			g.send(FrameEOF, nil)
			return
		}
	}
}

// pumpIn hands the host's bytes to the keep. Only data and its end may
// follow the launch request.
func (g *Guest) pumpIn() {
	discard := false
	for {
		typ, p, err := readFrame(g.conn)
		if err == nil {
			switch typ {
			case FrameData:
				if !discard {
					if _, werr := g.ourEnd.Write(p); werr != nil {
						discard = true // the keep closed its stream
					}
				}
				continue
			case FrameEOF:
				g.ourEnd.Close()
				discard = true
				continue
			case FrameOpen, FrameAnswer, FrameBytes, FrameCredit, FrameFin, FrameClose:
				if err = g.relay.handle(typ, p); err == nil {
					continue
				}
			default:
				err = fmt.Errorf("%w: %q frame from the host after the launch request", ErrFrame, typ)
			}
		}
		if !errors.Is(err, io.EOF) {
			g.protoMu.Lock()
			g.protoErr = err
			g.protoMu.Unlock()
		}
		g.ourEnd.Close()
		g.relay.shutdown()
		if !errors.Is(err, io.EOF) {
			g.inErr <- err
		}
		return
	}
}
