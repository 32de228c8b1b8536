package keepcert_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/keepcert"
)

// A relying party dials a keep and accepts it only if it runs the expected
// workload on real SEV-SNP or TDX hardware, as certified by the owner's
// attestation service.
func Example() {
	caPEM, err := os.ReadFile("ca.pem") // the attestation service's CA
	if err != nil {
		fmt.Println(err)
		return
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	exp := keepcert.Expect{
		Digest:    "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		Platforms: []string{keepcert.PlatformSNP, keepcert.PlatformTDX},
		Roots:     roots,
	}
	conn, err := tls.Dial("tcp", "keep.example:443", &tls.Config{
		InsecureSkipVerify:    true, // keeps are named by their claims, checked here:
		VerifyPeerCertificate: keepcert.VerifyPeerCertificate(exp),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	claims, _ := keepcert.VerifyConnectionState(conn.ConnectionState(), exp)
	fmt.Printf("%s keep runs %s (measurement %x)\n", claims.Platform, claims.WorkloadDigest, claims.Measurement)
}
