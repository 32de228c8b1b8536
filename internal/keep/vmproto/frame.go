// Package vmproto is the protocol between the host and the castellan that
// runs as PID 1 inside a VM keep, over the VM's one virtio-serial port
// (named "castellan"). Both sides import it: the host through Handshake,
// which sends the per-keep launch request and returns the keep's hello, the
// relayed delivery stream, the keep's log and state events and its exit
// status; the guest through Accept, which reads the launch request and
// gives the keep code its channels.
//
// The wire is a sequence of frames in the delivery protocol's framing (a
// type byte, a big-endian uint32 payload length, the payload); every type
// has its own size limit, and a
// frame that breaks one, an unknown type or a frame out of order ends the
// session with an error. The session runs:
//
//	guest → host  V  version "castellan-vm/1" (the guest's castellan is up)
//	host  → guest L  launch request, JSON (LaunchRequest)
//	guest → host  H  the keep's hello, JSON of delivery.Hello
//	both          D  delivery bytes (TLS records: the host relays ciphertext only)
//	both          E  end of the sender's delivery bytes
//	guest → host  S  a state change ("running")
//	guest → host  G  one log line
//	guest → host  X  the exit status, JSON (Exit); then the guest powers off
//
// After the hello, the guest may also open connections to the secret
// service the host was configured with (relay.go). Each payload starts
// with the stream's id (big-endian uint32; the guest numbers its opens
// 1, 2, 3...):
//
//	guest → host  O  open stream id (the guest names no address)
//	host  → guest A  the answer: id alone = connected, id + reason = refused
//	both          B  id + the stream's bytes (at most MaxData)
//	both          K  id + uint32: bytes the receiver's reader consumed (credit)
//	both          F  id: end of the sender's bytes (half-close)
//	both          C  id: the sender dropped the stream (an id is dead once
//	                 both sides sent C, or after a refusal)
//
// At most MaxStreams streams are open at once and at most StreamWindow
// bytes per direction are in flight unread; breaking a bound, a frame for
// a stream that is not open or an open of a used id ends the session.
//
// A guest that fails before its hello sends X without H. The host side
// never blocks on a slow consumer of events (they are dropped and counted)
// and allocates at most one frame of the largest limit (1 MiB) at a time,
// plus the relay's buffers (at most MaxStreams × StreamWindow per side).
package vmproto

import (
	"errors"
	"fmt"
	"io"

	"github.com/castellan-dev/castellan/internal/delivery"
)

// Version is the payload of the guest's first frame.
const Version = "castellan-vm/1"

// PortName is the name of the virtio-serial port the guest looks for.
const PortName = "castellan"

// Frame types.
const (
	FrameVersion = 'V'
	FrameLaunch  = 'L'
	FrameHello   = 'H'
	FrameData    = 'D'
	FrameEOF     = 'E'
	FrameState   = 'S'
	FrameLog     = 'G'
	FrameExit    = 'X'

	// The relay's frames (relay.go).
	FrameOpen   = 'O'
	FrameAnswer = 'A'
	FrameBytes  = 'B'
	FrameCredit = 'K'
	FrameFin    = 'F'
	FrameClose  = 'C'
)

// Size limits of frame payloads.
const (
	MaxVersion = 64
	MaxLaunch  = 256 << 10         // the launch request, with simulation CA material
	MaxHello   = delivery.MaxFrame // the largest; at least delivery.MaxHelloSize (checked by a test)
	MaxData    = 32 << 10          // one relayed chunk
	MaxState   = 64
	MaxLog     = 4096
	MaxExit    = 8 << 10

	MaxOpen   = 4              // a stream id
	MaxAnswer = 4 + MaxRefusal // id and a refusal's reason
	MaxBytes  = 4 + MaxData    // id and one chunk of a stream
	MaxCredit = 8              // id and a count
	MaxFin    = 4
	MaxClose  = 4
)

// maxPayload returns the limit of typ, or -1 for an unknown type.
func maxPayload(typ byte) int {
	switch typ {
	case FrameVersion:
		return MaxVersion
	case FrameLaunch:
		return MaxLaunch
	case FrameHello:
		return MaxHello
	case FrameData:
		return MaxData
	case FrameEOF:
		return 0
	case FrameState:
		return MaxState
	case FrameLog:
		return MaxLog
	case FrameExit:
		return MaxExit
	case FrameOpen:
		return MaxOpen
	case FrameAnswer:
		return MaxAnswer
	case FrameBytes:
		return MaxBytes
	case FrameCredit:
		return MaxCredit
	case FrameFin:
		return MaxFin
	case FrameClose:
		return MaxClose
	}
	return -1
}

// ErrFrame marks a malformed frame (unknown type, over its limit, out of order).
var ErrFrame = errors.New("vm channel: bad frame")

// writeFrame writes one frame (callers serialise), in the delivery
// protocol's framing.
func writeFrame(w io.Writer, typ byte, p []byte) error {
	if m := maxPayload(typ); m < 0 || len(p) > m {
		return fmt.Errorf("%w: %q frame of %d bytes", ErrFrame, typ, len(p))
	}
	return delivery.WriteFrame(w, typ, p)
}

// readFrame reads one frame and refuses unknown types and payloads over
// their type's limit, before the payload is allocated. io.EOF means a
// clean end between frames.
func readFrame(r io.Reader) (byte, []byte, error) {
	typ, p, err := delivery.ReadFrameOf(r, maxPayload)
	switch {
	case err == io.EOF:
		return 0, nil, err
	case errors.Is(err, io.ErrUnexpectedEOF):
		return 0, nil, fmt.Errorf("%w: truncated: %v", ErrFrame, err)
	case err != nil:
		return 0, nil, fmt.Errorf("%w: %v", ErrFrame, err)
	}
	return typ, p, nil
}
