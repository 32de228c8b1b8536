package cli

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/internal/packages"
)

var packageRmCmd = &Command{
	Name:    "package rm",
	Usage:   "package rm [--store DIR] REF...",
	Summary: "remove packages from the local store and free their space",
	Help: `Removes the names REF... from the local store (NAME:TAG, or a registry
reference as pulled). A package goes with its last name; a pinned reference
(NAME@sha256:...) removes the package and all its names. Then the blobs that
no package in the store uses are deleted. Every REF must be in the store, or
nothing is removed. Registries and oci-layout folders are not touched.`,
}

func addPackageRmFlags(fs *flag.FlagSet) *string {
	def, _ := packages.DefaultDir()
	return fs.String("store", def, "local package store (an OCI image-layout folder; $CASTELLAN_STORE)")
}

func init() {
	DefineFlags(packageRmCmd.Name, func(fs *flag.FlagSet) { addPackageRmFlags(fs) })
	packageRmCmd.Run = func(e *Env, args []string) int {
		fs := e.FlagSet(packageRmCmd)
		dir := addPackageRmFlags(fs)
		pos, status, ok := e.Parse(packageRmCmd, fs, args)
		if !ok {
			return status
		}
		if len(pos) == 0 {
			return e.Usagef("package rm: want one or more package references (see 'castellan package ls')")
		}
		if _, err := os.Stat(*dir); err != nil {
			// Never create a store to remove from it.
			return packageError(e, fmt.Errorf("%s: no such package in the package store %s: %w", pos[0], *dir, packages.ErrNotFound))
		}
		s, err := packages.Open(*dir, packages.Options{})
		if err != nil {
			return e.Errorf("%v", err)
		}
		r, err := s.Remove(context.Background(), pos)
		if err != nil {
			return packageError(e, err)
		}
		for _, n := range r.Names {
			fmt.Fprintf(e.Stdout, "untagged %s\n", n)
		}
		for _, d := range r.Manifests {
			fmt.Fprintf(e.Stdout, "deleted %s\n", d)
		}
		e.Infof("freed %s (%d blobs)", packages.FormatSize(r.Bytes), r.Blobs)
		return ExitOK
	}
	Register(packageRmCmd)
}
