//go:build !amd64

package qemu

// snpCPUID returns the defaults: SEV-SNP hosts are amd64.
func snpCPUID() (cbitpos, reducedPhysBits int) {
	return DefaultCBitPos, DefaultReducedPhysBits
}
