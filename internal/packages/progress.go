package packages

import (
	"fmt"
	"io"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// bar draws one transfer's progress on a terminal line; a nil *bar (no
// Progress writer) draws nothing.
type bar struct {
	w     io.Writer
	label string
	total int64
	n     int64
	last  time.Time
}

func (s *Store) newBar(what string, desc ocispec.Descriptor) *bar {
	if s.Progress == nil {
		return nil
	}
	return &bar{w: s.Progress, label: fmt.Sprintf("%-8s %s", what, desc.Digest.Encoded()[:12]), total: desc.Size}
}

func (b *bar) wrap(r io.Reader) io.Reader {
	if b == nil {
		return r
	}
	return readerFunc(func(p []byte) (int, error) {
		n, err := r.Read(p)
		b.n += int64(n)
		if now := time.Now(); now.Sub(b.last) > 100*time.Millisecond {
			b.last = now
			b.draw("")
		}
		return n, err
	})
}

func (b *bar) draw(end string) {
	const width = 24
	filled := width
	if b.total > 0 {
		filled = int(min(b.n, b.total) * width / b.total)
	}
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = ' '
		if i < filled {
			bar[i] = '='
		}
	}
	fmt.Fprintf(b.w, "\r%s [%s] %s / %s%s", b.label, bar, FormatSize(b.n), FormatSize(b.total), end)
}

// done ends the bar's line.
func (b *bar) done(ok bool) {
	if b == nil {
		return
	}
	if ok {
		b.n = b.total
		b.draw(" done\n")
		return
	}
	b.draw(" failed\n")
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// FormatSize renders a byte count for people: 512 B, 1.5 KiB, 64.0 MiB.
func FormatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
