// Package cli is the castellan command line. Each subcommand lives in its
// own cmd_*.go file and registers itself; all output goes through the
// helpers in this file so that messages keep one form:
//
//	castellan: error: app.wasm: not a WebAssembly module
//	castellan: hint: build it with GOOS=wasip1 GOARCH=wasm
//	castellan: warning: ...
//
// Main returns the exit status instead of exiting, so that tests run the
// real CLI in-process.
package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Version is set at build time with -ldflags "-X .../internal/cli.Version=...".
var Version = "dev"

// Env is what a command may touch of the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Command is one subcommand.
type Command struct {
	Name    string // "run", or "package build" for a nested one
	Usage   string // "run [flags] app.wasm [-- args...]"
	Summary string // one line for the command list
	Help    string // longer text after the usage, may be empty
	Hidden  bool   // left out of the command list (internal commands)
	// Run parses args itself (with e.FlagSet) and returns the exit status.
	Run func(e *Env, args []string) int
}

var commands = map[string]*Command{}

// Register adds a command; call it from an init function.
func Register(c *Command) {
	if _, dup := commands[c.Name]; dup {
		panic("cli: duplicate command " + c.Name)
	}
	commands[c.Name] = c
}

// Exit statuses.
const (
	ExitOK    = 0
	ExitError = 1 // the command failed
	ExitUsage = 2 // the command line was wrong
)

// Main runs the castellan command line with args (without the program name).
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &Env{Stdin: stdin, Stdout: stdout, Stderr: stderr}
	if len(args) == 0 {
		e.usage(e.Stderr)
		return ExitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 {
			if c := lookup(args[1:]); c != nil {
				e.commandHelp(e.Stdout, c)
				return ExitOK
			}
			if len(args) == 2 && isGroup(args[1]) {
				e.groupHelp(e.Stdout, args[1])
				return ExitOK
			}
			return e.Usagef("unknown command %q (see 'castellan help')", strings.Join(args[1:], " "))
		}
		e.usage(e.Stdout)
		return ExitOK
	case "-version", "--version":
		args = []string{"version"}
	}
	c := lookup(args)
	if c == nil {
		if isGroup(args[0]) {
			if len(args) > 1 && args[1] != "-h" && args[1] != "-help" && args[1] != "--help" {
				e.groupHelp(e.Stderr, args[0])
				return e.Usagef("unknown command %q (see 'castellan help %s')", args[0]+" "+args[1], args[0])
			}
			if len(args) > 1 {
				e.groupHelp(e.Stdout, args[0])
				return ExitOK
			}
			e.groupHelp(e.Stderr, args[0])
			return e.Usagef("%q needs a subcommand, one of the above", args[0])
		}
		return e.Usagef("unknown command %q (see 'castellan help')", args[0])
	}
	n := len(strings.Fields(c.Name))
	return processStatus(e, c.Run(e, args[n:]))
}

// processStatus is code as a process's exit status. A workload's status
// (run, deploy) is WASI's 32 bits and a process's 8: proc_exit(256) would
// read as success, so a status past 255 is 255, said on stderr.
func processStatus(e *Env, code int) int {
	if code < 0 || code > 255 {
		e.Warningf("the workload exited with status %d, which a process's exit status cannot carry: castellan exits with 255", code)
		return 255
	}
	return code
}

// lookup finds the longest registered command name that prefixes args.
func lookup(args []string) *Command {
	if len(args) >= 2 {
		if c, ok := commands[args[0]+" "+args[1]]; ok {
			return c
		}
	}
	return commands[args[0]]
}

func isGroup(name string) bool {
	for k := range commands {
		if strings.HasPrefix(k, name+" ") {
			return true
		}
	}
	return false
}

// groupHelp lists the subcommands of a group such as "host".
func (e *Env) groupHelp(w io.Writer, group string) {
	fmt.Fprintf(w, "Usage: castellan %s <command> [flags] [args]\n\nCommands:\n", group)
	for _, k := range visibleNames() {
		if strings.HasPrefix(k, group+" ") {
			fmt.Fprintf(w, "  %-18s %s\n", k, commands[k].Summary)
		}
	}
	fmt.Fprintf(w, "\nRun 'castellan help %s <command>' for a command's flags.\n", group)
}

// visibleNames lists the commands shown to users, sorted.
func visibleNames() []string {
	names := make([]string, 0, len(commands))
	for k, c := range commands {
		if !c.Hidden {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	return names
}

func (e *Env) usage(w io.Writer) {
	fmt.Fprintf(w, "castellan runs WebAssembly workloads in keeps and proves what they run.\n\nUsage:\n  castellan <command> [flags] [args]\n\nCommands:\n")
	for _, k := range visibleNames() {
		fmt.Fprintf(w, "  %-18s %s\n", k, commands[k].Summary)
	}
	fmt.Fprintf(w, "\nRun 'castellan help <command>' for a command's flags.\n")
}

func (e *Env) commandHelp(w io.Writer, c *Command) {
	fmt.Fprintf(w, "Usage: castellan %s\n\n%s\n", c.Usage, c.Summary)
	if c.Help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(c.Help))
	}
	fs := e.FlagSet(c)
	if def := flagDefs[c.Name]; def != nil {
		def(fs)
	}
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintf(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// flagDefs holds each command's flag declarations for its help text.
var flagDefs = map[string]func(*flag.FlagSet){}

// DefineFlags records the function that declares a command's flags, for
// 'castellan help'. The usual pattern declares flags in one function that
// returns the command's options, used both here and in Run:
//
//	DefineFlags("run", func(fs *flag.FlagSet) { addRunFlags(fs) })
//	// in Run:
//	fs := e.FlagSet(runCmd)
//	ro := addRunFlags(fs)
//	pos, status, ok := e.Parse(runCmd, fs, args)
func DefineFlags(name string, def func(*flag.FlagSet)) { flagDefs[name] = def }

// FlagSet returns a fresh, empty flag set for c that reports nothing itself.
func (e *Env) FlagSet(c *Command) *flag.FlagSet {
	fs := flag.NewFlagSet("castellan "+c.Name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// Parse parses args into fs (whose flags the caller declared) and reports a
// usage error for bad flags. Flags may come after positional arguments;
// everything after "--" is positional. ok is false when the command should
// return status; status is ExitOK for -h.
func (e *Env) Parse(c *Command, fs *flag.FlagSet, args []string) (pos []string, status int, ok bool) {
	fs.Usage = func() {}
	var rest []string
	for {
		if len(args) > 0 && args[0] == "--" {
			// flag.Parse would swallow the "--"; keep it for the command.
			rest = append(rest, args...)
			break
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				e.commandHelp(e.Stdout, c)
				return nil, ExitOK, false
			}
			status := e.Usagef("%s: %v (see 'castellan help %s')", c.Name, err, c.Name)
			if len(rest) > 0 && strings.Contains(c.Usage, "[-- args...]") && strings.Contains(err.Error(), "not defined") {
				e.Hintf("arguments for the workload go after --: castellan %s %s -- %s", c.Name, strings.Join(rest, " "), strings.Join(args, " "))
			}
			return nil, status, false
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			rest = append(rest, args...)
			break
		}
		rest = append(rest, args[0])
		args = args[1:]
	}
	return rest, ExitOK, true
}

// Errorf prints "castellan: error: ..." and returns ExitError.
func (e *Env) Errorf(format string, a ...any) int {
	fmt.Fprintf(e.Stderr, "castellan: error: %s\n", oneLine(fmt.Sprintf(format, a...)))
	return ExitError
}

// ErrorWithHint prints an error and a hint, and returns ExitError.
func (e *Env) ErrorWithHint(err error, hint string) int {
	e.Errorf("%v", err)
	e.Hintf("%s", hint)
	return ExitError
}

// Usagef prints a usage error and returns ExitUsage.
func (e *Env) Usagef(format string, a ...any) int {
	e.Errorf(format, a...)
	return ExitUsage
}

// Warningf prints "castellan: warning: ...".
func (e *Env) Warningf(format string, a ...any) {
	fmt.Fprintf(e.Stderr, "castellan: warning: %s\n", oneLine(fmt.Sprintf(format, a...)))
}

// Hintf prints "castellan: hint: ...".
func (e *Env) Hintf(format string, a ...any) {
	fmt.Fprintf(e.Stderr, "castellan: hint: %s\n", oneLine(fmt.Sprintf(format, a...)))
}

// Infof prints "castellan: ..." for progress and notices on stderr, so that
// stdout stays the workload's or the command's result.
func (e *Env) Infof(format string, a ...any) {
	fmt.Fprintf(e.Stderr, "castellan: %s\n", oneLine(fmt.Sprintf(format, a...)))
}

// oneLine keeps a message on one line: errors from deep inside (a TOML
// parser, a TLS stack) may carry newlines.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// PrintJSON writes v to stdout as indented JSON and returns ExitOK, or
// reports the error.
func (e *Env) PrintJSON(v any) int {
	enc := json.NewEncoder(e.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.Errorf("%v", err)
	}
	return ExitOK
}

// IsTerminal reports whether w is a terminal, for progress output.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func init() {
	Register(&Command{
		Name:    "version",
		Usage:   "version",
		Summary: "print the version of castellan",
		Run: func(e *Env, args []string) int {
			fmt.Fprintf(e.Stdout, "castellan %s\n", Version)
			return ExitOK
		},
	})
}
