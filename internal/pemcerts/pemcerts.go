// Package pemcerts reads X.509 certificates from PEM bundles: trust roots
// named by a policy, simulation roots, CA files given on the command line.
package pemcerts

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ErrNone says a bundle held no CERTIFICATE block.
var ErrNone = errors.New("no PEM certificate in it")

// Parse returns every CERTIFICATE block of b, in order; other blocks are
// skipped. A block that does not parse is an error, and so is a bundle with
// no certificate at all (ErrNone).
func Parse(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, ErrNone
	}
	return out, nil
}
