package tee

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/attest/evidence"
	"github.com/castellan-dev/castellan/internal/attest/verify"
	"github.com/castellan-dev/castellan/internal/tee/sim"
)

// fakeGramine makes a folder like Gramine's /dev/attestation, with
// user_report_data and quote as FIFOs served in turn: what is written to
// the first is the report data of a simulated SGX quote read from the
// second, as Gramine's quoting does.
func fakeGramine(t *testing.T, ca *sim.CA, attType string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "attestation_type"), []byte(attType+"\n"), 0o644)
	ud, q := filepath.Join(dir, "user_report_data"), filepath.Join(dir, "quote")
	for _, p := range []string{ud, q} {
		if err := mkfifo(p); err != nil {
			t.Skipf("no FIFOs here: %v", err)
		}
	}
	go func() {
		for {
			rdb, err := os.ReadFile(ud) // until the keep closes it
			if err != nil {
				return
			}
			var rd [64]byte
			copy(rd[:], rdb)
			quote, _ := ca.SignSGX(rd, sim.SGXOptions{})
			f, err := os.OpenFile(q, os.O_WRONLY, 0)
			if err != nil {
				return
			}
			f.Write(quote)
			f.Close()
		}
	}()
	return dir
}

func TestGramineSGX(t *testing.T) {
	ca := simCA(t)
	b := NewSGX(fakeGramine(t, ca, "dcap"))
	if err := b.Available(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the files are reused quote after quote
		env, err := Attest(context.Background(), b, spki(t), []byte("n"), digest)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := verify.Envelope(env, verify.Options{SimRoots: ca.Roots()})
		if err != nil {
			t.Fatal(err)
		}
		if cl.Platform != evidence.PlatformSGX || env.Platform != evidence.PlatformSGX {
			t.Errorf("claims %+v", cl)
		}
	}
}

func TestGramineSGXErrors(t *testing.T) {
	ca := simCA(t)
	missing := filepath.Join(t.TempDir(), "attestation")
	if err := NewSGX(missing).Available(); err == nil || !strings.Contains(err.Error(), missing+"/attestation_type") {
		t.Errorf("no folder: %v", err)
	}
	if err := NewSGX(fakeGramine(t, ca, "none")).Available(); err == nil || !strings.Contains(err.Error(), `is "none", want dcap`) {
		t.Errorf("attestation type none: %v", err)
	}
	// A folder whose quote is empty, or larger than any quote.
	for _, size := range []int{0, evidence.MaxEvidenceSize + 1} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "attestation_type"), []byte("dcap"), 0o644)
		os.WriteFile(filepath.Join(dir, "user_report_data"), nil, 0o644)
		os.WriteFile(filepath.Join(dir, "quote"), make([]byte, size), 0o644)
		_, _, err := NewSGX(dir).Evidence(context.Background(), [64]byte{1})
		if err == nil {
			t.Errorf("quote of %d bytes accepted", size)
		}
		// The report data was written before the quote was read.
		if rd, _ := os.ReadFile(filepath.Join(dir, "user_report_data")); !bytes.Equal(rd, append([]byte{1}, make([]byte, 63)...)) {
			t.Errorf("user_report_data = %x", rd)
		}
	}
}
