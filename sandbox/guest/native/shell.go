// The shell op: a command as `bash -c`, as the user, in its own process group, with the
// fixed environment, output kept head + tail (guest_shell.py). In an image without bash (a
// busybox one) commands run under its sh instead, and a shell call whose output shows it
// needed bash says so in one line at the end.
package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

const (
	exitGrace  = 100 * time.Millisecond // how long background children may keep the pipe open after bash exits
	pathEnv    = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	maxTimeout = 1e9 // seconds: "no upper bound", but a deadline Go's time can hold (31 years)

	// The command's directory is entered as the user: ForkExec's chdir comes after the uid
	// switch. Where that fails, a wrapper bash enters it (or falls back to home, then /)
	// the same way every time, with the same words on failure.
	cdThenRun = `cd -- "$1" 2>/dev/null || cd -- "$HOME" 2>/dev/null || cd /; exec bash -c "$2"`
	// What the BASH_ENV script does, for when it cannot be used: the wrapper shell raises its
	// own OOM score, and exec keeps it.
	oomFirst = "{ echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null; "
)

// bashEnv: every command's bash sources this script (BASH_ENV) before the command's code.
// It raises the command's oom_score_adj to 1000, so the container's OOM killer takes the
// model's processes before the guest (an unprivileged process may raise its own score), and
// takes BASH_ENV out of the command's environment. This binary has no file beside it to point
// BASH_ENV at (it is bind-mounted alone into any image), so the script is a sealed
// memfd passed to bash as fd 3 and named /proc/self/fd/3 (a memfd is a regular file anyone
// may open through that link; a pipe made by root is not). The script closes fd 3 first:
// the command never sees it, and the seals keep the script from being changed through it.
const bashEnvScript = "exec 3<&-; unset BASH_ENV; { echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null\n"
const bashEnvPath = "/proc/self/fd/3"

var bashEnv struct {
	fd     int
	usable bool
}

// memfdCreate is memfd_create's syscall number on this architecture (not in package syscall
// for every one); 0 where unknown, and BASH_ENV is then not used.
func memfdCreate() uintptr {
	switch runtime.GOARCH {
	case "amd64":
		return 319
	case "arm64", "riscv64", "loong64":
		return 279
	case "386":
		return 356
	case "ppc64", "ppc64le":
		return 360
	case "s390x":
		return 350
	}
	return 0
}

// setupBashEnv makes the BASH_ENV script; without it (no /proc, no memfd) every command
// starts through the wrapper, which raises the score itself (about 1 ms more per call).
func setupBashEnv() {
	nr := memfdCreate()
	if nr == 0 {
		return
	}
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		return
	}
	name := []byte("sandbox-guest-bash-env\x00")
	const mfdCloexec, mfdAllowSealing = 1, 2
	fd, _, e := syscall.Syscall(nr, uintptr(unsafe.Pointer(&name[0])), mfdCloexec|mfdAllowSealing, 0)
	if e != 0 {
		return
	}
	if n, err := syscall.Write(int(fd), []byte(bashEnvScript)); err != nil || n != len(bashEnvScript) {
		syscall.Close(int(fd))
		return
	}
	const fAddSeals, sealAll = 1033, 1 | 2 | 4 | 8 // F_SEAL_SEAL, SHRINK, GROW, WRITE
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, fAddSeals, sealAll); e != 0 {
		syscall.Close(int(fd))
		return
	}
	syscall.Fchmod(int(fd), 0o444)
	bashEnv.fd, bashEnv.usable = int(fd), true
}

// commandEnv is the fixed environment every command starts with; extra adds to it or
// replaces (a name it has keeps its place), in the request's order.
func commandEnv(id Identity, extra *jobj) []string {
	shell, usesBashEnv := "/bin/bash", bashEnv.usable
	if sh, err := findShell(); err == nil && sh.name != "bash" {
		shell, usesBashEnv = sh.path, false
	}
	keys := []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "TERM", "SHELL"}
	vals := map[string]string{
		"PATH": pathEnv, "HOME": id.Home, "USER": id.Name, "LOGNAME": id.Name,
		"LANG": "C.UTF-8", "TERM": "dumb", "SHELL": shell,
	}
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			keys = append(keys, k)
		}
		vals[k] = v
	}
	if extra != nil {
		for _, k := range extra.keys {
			set(k, extra.vals[k].(string))
		}
	}
	if usesBashEnv {
		set("BASH_ENV", bashEnvPath) // the script unsets it before the command runs
	}
	env := make([]string, len(keys))
	for i, k := range keys {
		env[i] = k + "=" + vals[k]
	}
	return env
}

// searchDirs is where lookPath looks: the commands' PATH (the Go unit tests replace it).
var searchDirs = strings.Split(pathEnv, ":")

// lookPath finds a program in the commands' PATH, as the child's exec would.
func lookPath(name string) (string, error) {
	for _, dir := range searchDirs {
		p := dir + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", &startError{errno: syscall.ENOENT, filename: name}
}

// shell is what commands start under: path, and name for argv[0] (busybox picks its applet
// by it, and has no bash applet).
type shell struct{ path, name string }

// findShell: bash, or where the image has none, its sh (busybox's ash, dash), which reads no
// BASH_ENV. With neither, the error names bash, as it always did.
func findShell() (shell, error) {
	path, err := lookPath("bash")
	if err == nil {
		return shell{path, "bash"}, nil
	}
	if sh, shErr := lookPath("sh"); shErr == nil {
		return shell{sh, "sh"}, nil
	}
	return shell{}, err
}

// worldSearchable: every directory from / down to path lets anyone enter it, so entering it
// directly is what the wrapper would do (so both roads give a command the same $PWD).
func worldSearchable(path string) bool {
	current := "/"
	for _, part := range strings.Split(filepath.Clean("/"+path), "/") {
		if part == "" {
			continue
		}
		current = filepath.Join(current, part)
		st, err := os.Stat(current)
		if err != nil || !st.IsDir() || st.Mode()&0o001 == 0 {
			return false
		}
	}
	return true
}

// launch starts a command in cwd as the user (shell and exec both start here). direct is
// bash started in the directory itself, used when anyone may enter it; otherwise, or when
// entering it fails, a wrapper bash runs enterThen with cwd and args as $1...: it enters the
// directory as the user and execs the command; it also raises the OOM score when BASH_ENV
// cannot. Without bash, sh always goes through the wrapper (it reads no BASH_ENV), and
// the wrapper's own `exec bash -c` becomes `exec sh -c`.
func launch(direct []string, enterThen string, args []string, cwd string, id Identity, env []string, mode stderrMode,
	extra ...uintptr) (*child, error) {
	sh, err := findShell()
	if err != nil {
		return nil, err
	}
	useEnv := bashEnv.usable && sh.name == "bash"
	spec := spawnSpec{path: sh.path, dir: cwd, env: env, ident: id, stderr: mode, bashEnv: useEnv, extra: extra}
	if useEnv && worldSearchable(cwd) {
		spec.argv = direct
		c, err := spawn(spec)
		switch errnoOf(err) {
		case 0:
			return c, nil
		case syscall.EACCES, syscall.ENOENT, syscall.ENOTDIR:
			// the directory changed meanwhile: enter it as the user
		default:
			return nil, err
		}
	}
	script := enterThen
	if sh.name != "bash" {
		script = strings.ReplaceAll(script, "exec bash -c", "exec "+sh.name+" -c")
	}
	if !useEnv {
		script = oomFirst + script
	}
	spec.argv = append([]string{sh.name, "-c", script, sh.name, cwd}, args...)
	spec.dir = "/"
	return spawn(spec)
}

// noBashNote ends a shell call's output when the image has no bash and the output shows the
// command needed it: the model learns why, instead of guessing at sh's terse error.
const noBashNote = "(no bash in this image: commands run with /bin/sh)\n"

// bashOnly: commands sh (busybox's ash, dash) lacks that bash users reach for; "NAME: not
// found" in the output names one.
var bashOnly = []string{"bash", "declare", "typeset", "shopt", "mapfile", "readarray", "pushd", "popd",
	"complete", "compgen", "source", "let", "[["}

// neededBash: sh's words for bash syntax it cannot parse (ash: "syntax error: bad
// substitution", "syntax error: unexpected \"(\""; dash: "Syntax error", "Bad substitution")
// or for a bash builtin it does not have.
func neededBash(output string) bool {
	lower := strings.ToLower(output)
	if strings.Contains(lower, "syntax error") || strings.Contains(lower, "bad substitution") {
		return true
	}
	for _, name := range bashOnly {
		if strings.Contains(output, name+": not found") {
			return true
		}
	}
	return false
}

// pathJoin is Python's os.path.join(a, b): b when absolute, else a + "/" + b, and nothing
// cleaned (the kernel resolves "..", symlinks included, as the user would).
func pathJoin(a, b string) string {
	if strings.HasPrefix(b, "/") || a == "" {
		return b
	}
	if strings.HasSuffix(a, "/") {
		return a + b
	}
	return a + "/" + b
}

// readOOMCount is the cgroup's oom_kill counter (v2 or v1); ok false when none is readable.
func readOOMCount() (int64, bool) {
	for _, path := range []string{"/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			key, value, _ := strings.Cut(line, " ")
			if key == "oom_kill" {
				if n, err := strconv.ParseInt(strings.TrimSpace(value), 10, 64); err == nil {
					return n, true
				}
			}
		}
	}
	return 0, false
}

// oomCounter is replaced by the Go unit tests.
var oomCounter = readOOMCount

// oomEvidence: killed by the kernel's OOM killer only when bash died of SIGKILL without
// timing out and the cgroup's counter grew during the call.
func oomEvidence(sig int, timedOut bool, before int64, beforeOK bool) bool {
	if sig != int(syscall.SIGKILL) || timedOut || !beforeOK {
		return false
	}
	after, ok := oomCounter()
	return ok && after > before
}

// --- output --------------------------------------------------------------------------------

// pipeReader copies one of a command's pipes into its buffer, on a goroutine parked on the
// poller (no thread), until end of file or until stopped.
type pipeReader struct {
	f    *os.File
	buf  *HeadTailBuffer
	done chan struct{}
	eof  bool
}

func readPipe(f *os.File, buf *HeadTailBuffer) *pipeReader {
	r := &pipeReader{f: f, buf: buf, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		chunk := make([]byte, chunkSize)
		for {
			n, err := f.Read(chunk)
			if n > 0 {
				buf.Write(chunk[:n])
			}
			if err != nil {
				r.eof = err == io.EOF
				return
			}
		}
	}()
	return r
}

// stop ends the copying and collects what still sits in the pipe, for at most 50 ms and
// without waiting for more (a process that escaped the group may hold the pipe open; the
// sweep kills it), then closes the pipe.
func (r *pipeReader) stop() {
	r.f.SetReadDeadline(time.Unix(1, 0)) // wakes the parked Read
	<-r.done
	if !r.eof {
		r.f.SetReadDeadline(time.Time{})
		if rc, err := r.f.SyscallConn(); err == nil {
			end := time.Now().Add(50 * time.Millisecond)
			chunk := make([]byte, chunkSize)
			rc.Read(func(fd uintptr) bool {
				for time.Now().Before(end) {
					n, err := syscall.Read(int(fd), chunk)
					if n <= 0 || err != nil {
						break
					}
					r.buf.Write(chunk[:n])
				}
				return true
			})
		}
	}
	r.f.Close()
}

// pump waits until bash exits and its pipes close (background children get exitGrace to
// close them), or until the deadline; true if the deadline hit while bash still ran.
func pump(pid int, readers []*pipeReader, deadline time.Time) bool {
	allClosed := make(chan struct{})
	go func() {
		for _, r := range readers {
			<-r.done
		}
		close(allClosed)
	}()
	var exitedAt time.Time
	closed := false
	for {
		wake := childEvents.next()
		now := time.Now()
		if exitedAt.IsZero() && hasExited(pid) {
			exitedAt = now
		}
		if !closed {
			select {
			case <-allClosed:
				closed = true
			default:
			}
		}
		if !exitedAt.IsZero() && (closed || !now.Before(exitedAt.Add(exitGrace))) {
			return false
		}
		if exitedAt.IsZero() && !now.Before(deadline) {
			return true
		}
		limit := deadline.Sub(now)
		if !exitedAt.IsZero() {
			limit = exitedAt.Add(exitGrace).Sub(now)
		}
		if limit > 50*time.Millisecond {
			limit = 50 * time.Millisecond // a safety net only: SIGCHLD and end of file wake us
		}
		var closing <-chan struct{}
		if !closed {
			closing = allClosed
		}
		t := time.NewTimer(limit)
		select {
		case <-wake:
		case <-closing:
		case <-t.C:
		}
		t.Stop()
	}
}

// runCommand is what shell and exec do once their bash started: copy its output until it
// ends or the deadline, kill its group until empty, collect what is left in the pipes, reap
// it, and sweep what it left (setsid, setpgid) that no other running call owns.
func runCommand(c *child, id Identity, readers []*pipeReader, deadline time.Time) (timedOut bool, ws syscall.WaitStatus) {
	defer func() {
		if !hasExited(c.pid) { // in case bash moved itself out of its group
			syscall.Kill(c.pid, syscall.SIGKILL)
		}
		killGroup(c.pid)
		for _, r := range readers {
			r.stop()
		}
		ws, _ = waitChild(c.pid, 0)
		forget(c.pid)
		sweep(id, true)
	}()
	return pump(c.pid, readers, deadline), ws
}

// deadlineAfter: timeout seconds from started, bounded so that Go's time can hold it.
func deadlineAfter(started time.Time, timeout float64) time.Time {
	if timeout > maxTimeout {
		timeout = maxTimeout
	}
	return started.Add(time.Duration(timeout * float64(time.Second)))
}

// commandFields: what shell (and the future run_tests) read from a request.
func commandFields(req *jobj, workdir string) (command string, timeout float64, cap int, cwd string, err error) {
	command, ok := req.get("command").(string)
	if !ok {
		return "", 0, 0, "", badRequest("shell needs a string 'command'")
	}
	if timeout, err = numberField(req, "timeout", DefaultTimeout); err != nil {
		return
	}
	if timeout <= 0 {
		return "", 0, 0, "", badRequest("'timeout' must be positive")
	}
	if cap, err = capField(req); err != nil {
		return
	}
	cwd = workdir
	if v := req.get("cwd"); truthy(v) {
		if cwd, ok = v.(string); !ok {
			return "", 0, 0, "", badRequest("'cwd' must be a string or null")
		}
	}
	if strings.ContainsRune(command, 0) || strings.ContainsRune(cwd, 0) {
		return "", 0, 0, "", badRequest("'command' and 'cwd' must not contain NUL characters")
	}
	return command, timeout, cap, cwd, nil
}

// runShell runs one command in its own process group and leaves nothing of the user's
// behind but what other running calls own.
func runShell(req *jobj, workdir string, id Identity) (obj, error) {
	command, timeout, cap, cwd, err := commandFields(req, workdir)
	if err != nil {
		return nil, err
	}
	oomBefore, oomOK := oomCounter()
	started := time.Now()
	env := commandEnv(id, nil)
	_, noBash := lookPath("bash")
	c, err := launch([]string{"bash", "-c", command}, cdThenRun, []string{command}, pathJoin(workdir, cwd), id, env, stderrMerged)
	if err != nil {
		// EAGAIN from fork means the container's pids limit is used up, by the model's own
		// processes (nothing else runs there): the host side treats it as theirs.
		return startErrorReply("could not start the command: ", err), nil
	}
	buf := NewHeadTailBuffer(cap)
	timedOut, ws := runCommand(c, id, []*pipeReader{readPipe(c.stdout, buf)}, deadlineAfter(started, timeout))
	if noBash != nil {
		if text := buf.Text(); neededBash(text) {
			if text != "" && !strings.HasSuffix(text, "\n") {
				buf.Write([]byte("\n"))
			}
			buf.Write([]byte(noBashNote))
		}
	}
	return commandReply(ws, timedOut, oomBefore, oomOK, started,
		kv{"output", buf.Text()}, kv{"output_bytes", buf.Total}, kv{"truncated_bytes", buf.Dropped()}), nil
}

// commandReply is ShellReply (and ExecReply) around the output fields.
func commandReply(ws syscall.WaitStatus, timedOut bool, oomBefore int64, oomOK bool, started time.Time, output ...kv) obj {
	rc := returnCode(ws)
	var exitCode, signal any
	if !timedOut && rc >= 0 {
		exitCode = rc
	}
	sig := 0
	if rc < 0 {
		sig = -rc
		signal = sig
	}
	if timedOut {
		signal = int(syscall.SIGKILL)
	}
	oom := oomEvidence(sig, timedOut, oomBefore, oomOK)
	reply := obj{{"exit_code", exitCode}, {"signal", signal}, {"timed_out", timedOut}, {"oom_killed", oom}}
	reply = append(reply, output...)
	return append(reply, kv{"duration_ms", roundMillis(time.Since(started).Seconds())})
}

// warmUp runs one command the way requests will, before the socket exists: bash and its
// libraries are read once (a warm container's first call is as fast as the rest), and the
// BASH_ENV script is checked: it must have run (it unsets BASH_ENV) and said nothing. A bash
// that cannot source it would print an error for every command, or run commands with the
// guest's own OOM score; then the wrapper raises the score instead.
func warmUp(workdir, user string) {
	id, err := resolveIdentity(user)
	if err != nil {
		return // every request says so
	}
	const probe = `echo "${BASH_ENV-sourced}"`
	req := &jobj{keys: []string{"command", "timeout"}, vals: map[string]any{"command": probe, "timeout": json.Number("10")}}
	reply, err := runShell(req, workdir, id)
	if err != nil || len(reply) == 0 || reply[0].k == "error" || !bashEnv.usable {
		return // a real problem shows on the real request
	}
	for _, e := range reply {
		if e.k == "output" && e.v.(string) != "sourced\n" {
			bashEnv.usable = false
			os.Stderr.WriteString("guest: BASH_ENV script not sourced, raising OOM scores through a wrapper: " + e.v.(string) + "\n")
		}
	}
}
