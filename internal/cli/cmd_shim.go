package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/castellan-dev/castellan/internal/shim"
)

var shimInstallCmd = &Command{
	Name:    "shim install",
	Usage:   "shim install [--root DIR] [--options FILE] [--attest-ca FILE] [--handler NAME] [--wait]",
	Summary: "install containerd-shim-castellan-v1 and its runtime handler on a node",
	Help: `Copies this castellan binary to ROOT/usr/local/bin/castellan, links
containerd-shim-castellan-v1 to it, writes the shim's options (--options
FILE, TOML: keep, backend, attest, attest_ca, keep_image, firmware; checked
first) to ROOT/etc/castellan/shim.toml and adds the runtime handler NAME
(default castellan) to ROOT/etc/containerd/config.toml unless it is there.
--attest-ca FILE (the attestation service's CA certificate, PEM) is
copied to ROOT/etc/castellan/attest-ca.pem for the options' attest_ca.
containerd reads its config at start: restart it on the node once.
Running it again changes nothing. --wait then stays until stopped (the
DaemonSet's container). ROOT is the node's root as mounted (default /host).`,
}

func init() {
	shimInstallCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(shimInstallCmd)
		root := fs.String("root", "/host", "the node's root folder")
		optsFile := fs.String("options", "", "the shim's options (TOML; default: a process keep, backend nil)")
		caFile := fs.String("attest-ca", "", "the attestation service's CA certificate (PEM), for the options' attest_ca")
		handler := fs.String("handler", "castellan", "the runtime handler's name (the RuntimeClass's handler)")
		wait := fs.Bool("wait", false, "stay running after the install, until stopped")
		pos, status, ok := e.Parse(shimInstallCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) != 0 {
			return e.Usagef("shim install: takes no arguments, got %q", pos[0])
		}
		var opts []byte
		if *optsFile != "" {
			var err error
			if opts, err = os.ReadFile(*optsFile); err != nil {
				return e.Errorf("shim install: --options: %v", err)
			}
		}
		var ca []byte
		if *caFile != "" {
			var err error
			if ca, err = os.ReadFile(*caFile); err != nil {
				return e.Errorf("shim install: --attest-ca: %v", err)
			}
		}
		exe, err := os.Executable()
		if err != nil {
			return e.Errorf("shim install: %v", err)
		}
		in := &shim.Install{Root: *root, Binary: exe, Options: opts, Handler: *handler, AttestCA: ca}
		done, err := in.Run()
		if err != nil {
			return e.Errorf("shim install: %v", err)
		}
		for _, d := range done {
			e.Infof("%s", d)
		}
		if len(done) == 0 {
			e.Infof("shim install: nothing to change")
		}
		if *wait {
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			<-ctx.Done()
		}
		return ExitOK
	}
	Register(shimInstallCmd)
}
