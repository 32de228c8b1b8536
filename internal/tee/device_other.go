//go:build !linux

package tee

import (
	"errors"

	sevclient "github.com/google/go-sev-guest/client"
	tdxclient "github.com/google/go-tdx-guest/client"
)

var errNotLinux = errors.New("TEE guest devices exist only on Linux")

func openSevDevice(string) (sevclient.Device, error) { return nil, errNotLinux }
func openTdxDevice(string) (tdxclient.Device, error) { return nil, errNotLinux }
