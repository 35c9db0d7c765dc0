// sandbox-guest: the in-container agent that runs a rollout's tool calls, speaking the guest
// protocol (sandbox/guest/guest_protocol.py, whose docstring is the specification).
//
// A static binary with no runtime dependency: bind-mounted into arbitrary sandbox images and
// run there as the container's main process (under docker's init), or once per request
// through `docker exec`:
//
//	sandbox-guest supervise --socket PATH [--user USER] [--workdir DIR]   (the container's command)
//	sandbox-guest serve --socket PATH [--user USER] [--workdir DIR]
//	sandbox-guest once BASE64 [--user USER] [--workdir DIR]
//
// Standard library only; built offline by build.sh beside this file.
package main

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

const usage = `usage: sandbox-guest supervise --socket PATH [--user USER] [--workdir DIR]
       sandbox-guest serve --socket PATH [--user USER] [--workdir DIR]
       sandbox-guest once BASE64 [--user USER] [--workdir DIR]
`

type options struct {
	mode, socket, request, user, workdir string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "cat" { // read_file's reader where the image has no cat
		os.Exit(catMain(os.Args[2:]))
	}
	opts, code := parseArgs(os.Args[1:])
	if code >= 0 {
		os.Exit(code)
	}
	defaultIgnoredSignals()
	if opts.mode == "supervise" {
		restoreFileLimit() // the guest it starts inherits the container's own limit
		os.Exit(supervise(os.Args[2:]))
	}
	closeInheritedOnExec()
	restoreFileLimit()
	setupBashEnv()
	watchChildren()
	if opts.mode == "serve" {
		boundProcs()
		prewarmThreads()
		os.Exit(serve(opts.socket, opts.workdir, opts.user))
	}
	os.Exit(once(opts.request, opts.workdir, opts.user))
}

// parseArgs reads the command line the way Python's argparse would, which the protocol's
// command lines were written for: options in any order, as "--opt value" or "--opt=value". code >= 0 means exit with it (help, or a usage error).
func parseArgs(args []string) (options, int) {
	opts := options{workdir: "/workspace"}
	fail := func(msg string) (options, int) {
		os.Stderr.WriteString(usage + "sandbox-guest: error: " + msg + "\n")
		return opts, 2
	}
	if len(args) == 0 {
		return fail("the following arguments are required: mode")
	}
	if args[0] == "-h" || args[0] == "--help" {
		os.Stdout.WriteString(usage)
		return opts, 0
	}
	opts.mode = args[0]
	if opts.mode != "serve" && opts.mode != "once" && opts.mode != "supervise" {
		return fail("invalid mode: " + strconv.Quote(opts.mode) + " (choose from 'supervise', 'serve', 'once')")
	}
	var positional []string
	rest := args[1:]
	for i := 0; i < len(rest); i++ {
		arg := rest[i]
		if arg == "-h" || arg == "--help" {
			os.Stdout.WriteString(usage)
			return opts, 0
		}
		if !strings.HasPrefix(arg, "--") || arg == "--" {
			if arg == "--" {
				positional = append(positional, rest[i+1:]...)
				break
			}
			positional = append(positional, arg)
			continue
		}
		name, value, hasValue := strings.Cut(arg[2:], "=")
		var target *string
		switch {
		case name == "user":
			target = &opts.user
		case name == "workdir":
			target = &opts.workdir
		case name == "socket" && opts.mode != "once":
			target = &opts.socket
		default:
			return fail("unrecognized arguments: " + arg)
		}
		if !hasValue {
			if i+1 >= len(rest) {
				return fail("argument --" + name + ": expected one argument")
			}
			i++
			value = rest[i]
		}
		*target = value
	}
	switch opts.mode {
	case "serve", "supervise":
		if len(positional) > 0 {
			return fail("unrecognized arguments: " + strings.Join(positional, " "))
		}
		if opts.socket == "" {
			return fail("the following arguments are required: --socket")
		}
	case "once":
		if len(positional) != 1 {
			if len(positional) == 0 {
				return fail("the following arguments are required: request")
			}
			return fail("unrecognized arguments: " + strings.Join(positional[1:], " "))
		}
		opts.request = positional[0]
	}
	return opts, -1
}

// restoreFileLimit undoes what Go's os package does at start-up: it raises the soft limit of
// open files to the hard one, and Go 1.19 keeps that raised limit in the children it
// starts, where commands must see the container's own (a program that closes
// every possible descriptor, or sizes a table by the limit, would behave differently). The
// original is gone by main; the guest's parent still has it (docker's init in serve mode;
// init too under `docker exec`, whose processes get the container's limits).
func restoreFileLimit() {
	var cur syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur) != nil {
		return
	}
	for _, pid := range []int{os.Getppid(), 1} {
		if pid <= 0 {
			continue
		}
		soft, ok := softFileLimit(pid)
		if !ok {
			continue
		}
		if soft < cur.Cur {
			cur.Cur = soft
			syscall.Setrlimit(syscall.RLIMIT_NOFILE, &cur)
		}
		return
	}
}

// softFileLimit reads "Max open files" from /proc/PID/limits.
func softFileLimit(pid int) (uint64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(strings.TrimPrefix(line, "Max open files"))
			if len(f) < 1 {
				return 0, false
			}
			v, err := strconv.ParseUint(f[0], 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// boundProcs runs Go code on at most two threads at once (GOMAXPROCS), unless the
// environment says otherwise. The guest's work is waiting (on commands, pipes, sockets);
// Go's default, one per CPU the machine has (a container sees them all, whatever its CPU
// limit), would let a burst of requests make that many threads, each a pid of the
// container's limit.
func boundProcs() {
	if os.Getenv("GOMAXPROCS") == "" && runtime.NumCPU() > 2 {
		runtime.GOMAXPROCS(2)
	}
}

// prewarmThreads makes the Go runtime create a few OS threads now and keep them idle. The
// runtime starts a thread when a goroutine blocks in a system call and others need to run,
// and it aborts the whole process when it cannot (the container's pids limit used up by a
// fork bomb, exactly when the guest must keep answering). Idle threads are reused before any
// new one is made; the guest also blocks none while a command runs (procs.go).
func prewarmThreads() {
	const n = 4
	var started, done sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	done.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			defer done.Done()
			runtime.LockOSThread() // this goroutine's thread waits with it; others get new ones
			started.Done()
			<-release
			runtime.UnlockOSThread() // exiting unlocked: the thread goes to the idle pool
		}()
	}
	started.Wait()
	close(release)
	done.Wait()
}
