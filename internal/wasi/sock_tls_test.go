package wasi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/config"
)

// TestTLSSocketReads reads a TLS connection one byte at a time after
// several records arrived at once: what is decrypted but not yet read
// must keep poll_oneoff ready, and the end of the stream must be seen.
func TestTLSSocketReads(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	g := newGuest(t, Options{
		Files:       []config.File{{Kind: config.KindListen, Name: "l", Prot: config.ProtTLS, Addr: "127.0.0.1"}},
		Certificate: &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		OnListen:    func(_ string, a net.Addr) { addrc <- a.String() },
	})
	raw, err := net.Dial("tcp", <-addrc)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	client := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	client.SetDeadline(time.Now().Add(2 * time.Minute))
	fd := g.accept(0)
	// Three records, sent before the guest reads anything (the client's
	// first write also completes its side of the handshake).
	want := "first|second|third"
	for _, part := range strings.SplitAfter(want, "|") {
		if _, err := io.WriteString(client, part); err != nil {
			t.Fatal(err)
		}
	}
	var got strings.Builder
	for got.Len() < len(want) {
		if u, e, n, _ := g.pollRead(fd, time.Hour); u != 1 || e != 0 || n == 0 {
			t.Fatalf("poll after %q: userdata %d, errno %d, nbytes %d", got.String(), u, e, n)
		}
		s, e := g.recv(fd, 1, 0)
		if e != errSuccess || len(s) != 1 {
			t.Fatalf("read after %q: %q, errno %d", got.String(), s, e)
		}
		got.WriteString(s)
	}
	if got.String() != want {
		t.Fatalf("read %q, want %q", got.String(), want)
	}
	// A reply goes back encrypted; then the client closes.
	g.send(fd, "ok", client)
	client.Close()
	g.expectEOF(fd, "after the client closed")
}
