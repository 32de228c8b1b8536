package packages

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxErrorText bounds the text of an error that carries a registry's words.
const maxErrorText = 1024

// registryError is an error whose text holds what a registry sent (the
// message of an error response, a token server's complaint): its text has
// control characters, bidirectional-text marks and invalid UTF-8 escaped,
// and is cut to maxErrorText bytes, so that a hostile registry can neither
// draw on the user's terminal (escape sequences, a fake second line) nor
// flood it. errors.Is and errors.As see the error it wraps.
type registryError struct{ err error }

func (e *registryError) Error() string { return cleanText(e.err.Error(), maxErrorText) }

func (e *registryError) Unwrap() error { return e.err }

// fromRegistry wraps an error of the registry client as a registryError.
func fromRegistry(err error) error {
	if err == nil {
		return nil
	}
	return &registryError{err}
}

// Printable returns s with what a terminal would act on escaped (control
// characters as \xHH, bidirectional-text marks as \uHHHH, invalid UTF-8
// bytes as \xHH), for text of an untrusted package (its config's args,
// environment, names, paths) shown to a person: such text cannot then move
// the cursor, hide a line or print a line of its own.
func Printable(s string) string { return cleanText(s, 0) }

// cleanText escapes what a terminal would act on in s and cuts it to max
// bytes (0: no limit).
func cleanText(s string, max int) string {
	var b strings.Builder
	for i, r := range s {
		if max > 0 && b.Len() >= max {
			b.WriteString("... (cut)")
			break
		}
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
