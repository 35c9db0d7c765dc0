// The guest's processes: starting them on record, waiting for them, and killing whatever the
// sandbox user leaves.
//
// Nothing the sandbox user starts may outlive its call, whatever session or process group it
// moved itself into. Killing the command's own group is not enough (`setsid` leaves it), so
// when a command returns the guest sweeps: it SIGKILLs every process of the user that no
// running child of the guest accounts for, again and again until none is left. Calls may run
// in parallel, so "accounts for" is exact: every child the guest starts is started under one
// lock and stays on record until it has been waited for, and a process is spared while it is
// such a child, in such a child's group, or below one. The lock also keeps a sweep from
// seeing a child between its start and its record.
//
// The user is found by uid: its processes cannot change their uid. When commands run as the guest's own uid (tests, `docker exec
// -u`), the guest is a child subreaper instead: orphans come to it, and the sweep kills its
// own descendants (and reaps the orphans' zombies, by pid, never wait(-1), which would take
// a running command's status from its request).
//
// Go specifics: children are started with syscall.ForkExec (vfork-like, then the uid/gid/
// groups switch, setpgid and chdir in the child), never os/exec, whose Wait blocks an OS
// thread per command; the guest instead waits with WNOHANG, woken by SIGCHLD. Threads count
// against the container's pids limit, which a fork bomb uses up, and the Go runtime aborts
// when it cannot create one it needs: so the guest blocks no thread while a command runs.
package main

import (
	"errors"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

const (
	killBound  = 2 * time.Second // how long a sweep (or a group kill) keeps killing, against fork bombs
	startRetry = time.Second     // how long a start is retried while the pids limit is used up
	startNap   = 50 * time.Millisecond
	killNap    = 5 * time.Millisecond

	prSetChildSubreaper = 36
	pPID                = 1          // waitid's idtype for one pid
	wNOWAIT             = 0x01000000 // waitid: peek, leave the child waitable
)

const eagain = syscall.EAGAIN

var (
	procMu    sync.Mutex       // held while starting a child and while a sweep scans and kills
	running   = map[int]bool{} // children started and not yet waited for
	subreaper bool
	me        = os.Getpid()
)

// --- errors --------------------------------------------------------------------------------

// startError is a failed start, told the way Python's OSError prints: "[Errno 11] Resource
// temporarily unavailable", with ": 'program'" when the program itself could not be run.
type startError struct {
	errno    syscall.Errno
	filename string
}

func (e *startError) Error() string { return pyOSError(e) }

func errnoOf(err error) syscall.Errno {
	var se *startError
	if errors.As(err, &se) {
		return se.errno
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return 0
}

// isRetryable: the start failed for want of a resource (pids, memory, descriptors).
func isRetryable(err error) bool {
	switch errnoOf(err) {
	case syscall.EAGAIN, syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE:
		return true
	}
	return false
}

// strerror is glibc's text for errno (Go's has a lowercase first letter).
func strerror(errno syscall.Errno) string {
	s := errno.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

func pyOSError(err error) string {
	var se *startError
	if errors.As(err, &se) {
		s := "[Errno " + strconv.Itoa(int(se.errno)) + "] " + strerror(se.errno)
		if se.filename != "" {
			s += ": " + pyStrRepr(se.filename)
		}
		return s
	}
	if en := errnoOf(err); en != 0 {
		return "[Errno " + strconv.Itoa(int(en)) + "] " + strerror(en)
	}
	return err.Error()
}

// --- starting ------------------------------------------------------------------------------

type stderrMode int

const (
	stderrMerged stderrMode = iota // 2>&1: one pipe, interleaved as written
	stderrPipe                     // a pipe of its own
)

// spawnSpec: what to start, as whom and where.
type spawnSpec struct {
	path    string // the program's file (argv[0] is only its name)
	argv    []string
	dir     string // entered in the child after the user switch, i.e. as the user
	env     []string
	ident   Identity
	stderr  stderrMode
	bashEnv bool // pass the BASH_ENV script as fd 3 (shell.go)
	// extra: descriptors passed after those (run_tests' report pipe, tests_run.go).
	extra []uintptr
	// feedStdin: stdin is a pipe the guest writes (an upload's writer, transfer.go), returned
	// as child.stdin; otherwise /dev/null.
	feedStdin bool
}

// child: a process started on record, with the read ends of its output pipes (pollable:
// reading them parks a goroutine, not a thread).
type child struct {
	pid    int
	stdin  *os.File // the write end of its stdin, with spawnSpec.feedStdin
	stdout *os.File
	stderr *os.File // nil when merged
}

var devNull struct {
	once sync.Once
	fd   int
	err  error
}

func devNullFD() (int, error) {
	devNull.once.Do(func() {
		// read-write, as subprocess.DEVNULL is: a command may write to its stdin too
		devNull.fd, devNull.err = syscall.Open("/dev/null", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	})
	return devNull.fd, devNull.err
}

// spawn starts a child as the user, leader of a new process group, on record; a start that
// fails for want of a resource is retried for about startRetry. Release it with forget once
// waited for.
func spawn(spec spawnSpec) (*child, error) {
	end := time.Now().Add(startRetry)
	for {
		c, err := spawnOnce(spec)
		if err == nil {
			return c, nil
		}
		if !isRetryable(err) || !time.Now().Before(end) {
			return nil, err
		}
		time.Sleep(startNap)
	}
}

// startHook replaces ForkExec in the Go unit tests (a fork that keeps failing).
var startHook func(path string, argv []string, attr *syscall.ProcAttr) (int, error)

func spawnOnce(spec spawnSpec) (*child, error) {
	stdin, inR, inW, err := stdinFor(spec)
	if err != nil {
		return nil, &startError{errno: errnoOf(err)}
	}
	if inR != nil {
		defer inR.Close()
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		closeAll(inW)
		return nil, &startError{errno: errnoOf(err)}
	}
	defer outW.Close()
	files := []uintptr{stdin, outW.Fd(), outW.Fd()}
	var errR *os.File
	if spec.stderr == stderrPipe {
		var errW *os.File
		errR, errW, err = os.Pipe()
		if err != nil {
			closeAll(outR, inW)
			return nil, &startError{errno: errnoOf(err)}
		}
		defer errW.Close()
		files[2] = errW.Fd()
	}
	if spec.bashEnv {
		files = append(files, uintptr(bashEnv.fd))
	}
	files = append(files, spec.extra...)
	sys := &syscall.SysProcAttr{Setpgid: true}
	if spec.ident.Switch {
		sys.Credential = &syscall.Credential{Uid: spec.ident.UID, Gid: spec.ident.GID, Groups: spec.ident.Groups}
	}
	attr := &syscall.ProcAttr{Dir: spec.dir, Env: spec.env, Files: files, Sys: sys}
	procMu.Lock()
	var pid int
	if startHook != nil {
		pid, err = startHook(spec.path, spec.argv, attr)
	} else {
		pid, err = syscall.ForkExec(spec.path, spec.argv, attr)
	}
	if err == nil {
		running[pid] = true
	}
	procMu.Unlock()
	if err != nil {
		closeAll(outR, errR, inW)
		se := &startError{errno: errnoOf(err)}
		if !isRetryable(err) && se.errno != 0 {
			se.filename = spec.argv[0] // the program (or its directory) could not be entered
		}
		if se.errno == 0 {
			return nil, err
		}
		return nil, se
	}
	if inW != nil {
		setPipeSize(inW)
	}
	return &child{pid: pid, stdout: outR, stderr: errR, stdin: inW}, nil
}

// stdinFor: the child's stdin, /dev/null, or the read end of a pipe (the child's own copy is
// made at fork; the caller closes this one) with the write end the guest feeds.
func stdinFor(spec spawnSpec) (fd uintptr, inR, inW *os.File, err error) {
	if !spec.feedStdin {
		null, err := devNullFD()
		return uintptr(null), nil, nil, err
	}
	inR, inW, err = os.Pipe()
	if err != nil {
		return 0, nil, nil, err
	}
	return inR.Fd(), inR, inW, nil
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// closeInheritedOnExec marks every descriptor the guest inherited above stderr close-on-exec:
// ForkExec passes a child every descriptor that is not, so a command would otherwise get
// whatever the guest's parent left open; it must get only its own (as Popen's close_fds
// would leave it). The guest's own descriptors are all opened close-on-exec.
func closeInheritedOnExec() {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		if fd, err := strconv.Atoi(name); err == nil && fd > 2 {
			syscall.CloseOnExec(fd)
		}
	}
}

// forget takes a waited-for child off the record (its pid may be reused from now on).
func forget(pid int) {
	procMu.Lock()
	delete(running, pid)
	procMu.Unlock()
}

// --- waiting -------------------------------------------------------------------------------

// broadcast wakes every waiter at once: next() is a channel closed at the next SIGCHLD.
// A waiter takes it before looking at its child, so no exit can slip between the look and
// the wait.
type broadcast struct {
	mu sync.Mutex
	ch chan struct{}
}

func (b *broadcast) next() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcast) fire() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}

var childEvents = &broadcast{ch: make(chan struct{})}

// watchChildren turns SIGCHLD into childEvents (Go's handler leaves children waitable).
func watchChildren() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		for range sigs {
			childEvents.fire()
		}
	}()
}

// hasExited peeks without reaping: a zombie leader keeps its pgid from being reused.
func hasExited(pid int) bool {
	var info [128]byte // siginfo_t: si_signo, si_errno, si_code, then (aligned) si_pid
	siPid := 3 * 4
	if unsafe.Sizeof(uintptr(0)) == 8 {
		siPid = 16
	}
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info[0])),
			syscall.WEXITED|syscall.WNOHANG|wNOWAIT, 0, 0)
		switch e {
		case 0: // with WNOHANG, si_pid stays 0 while the child runs
			return *(*int32)(unsafe.Pointer(&info[siPid])) != 0
		case syscall.EINTR:
			continue
		case syscall.ECHILD:
			return true
		default:
			return false
		}
	}
}

// waitChild reaps a child, waiting for it as long as it takes (it has been killed, or has
// exited, when this is called; a timeout > 0 bounds the wait, for read_file's reader).
func waitChild(pid int, timeout time.Duration) (syscall.WaitStatus, bool) {
	var end time.Time
	if timeout > 0 {
		end = time.Now().Add(timeout)
	}
	for {
		wake := childEvents.next()
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if got == pid {
			return ws, true
		}
		if err == syscall.ECHILD {
			return ws, true // not ours to wait for (cannot happen to a child on record)
		}
		nap := 50 * time.Millisecond
		if timeout > 0 {
			left := time.Until(end)
			if left <= 0 {
				return ws, false
			}
			if left < nap {
				nap = left
			}
		}
		t := time.NewTimer(nap)
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// returnCode is Popen.returncode: the exit status, or minus the signal that killed it.
func returnCode(ws syscall.WaitStatus) int {
	if ws.Signaled() {
		return -int(ws.Signal())
	}
	return ws.ExitStatus()
}

// --- killing -------------------------------------------------------------------------------

type procInfo struct {
	ppid, pgid int
	zombie     bool
}

// scan lists every process this guest can see (its container's), from /proc/PID/stat.
func scan() map[int]procInfo {
	found := map[int]procInfo{}
	d, err := os.Open("/proc")
	if err != nil {
		return found
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 || i+2 > len(data) {
			continue
		}
		fields := strings.Fields(string(data[i+2:]))
		if len(fields) < 3 {
			continue
		}
		ppid, err1 := strconv.Atoi(fields[1])
		pgid, err2 := strconv.Atoi(fields[2])
		if err1 != nil || err2 != nil {
			continue
		}
		found[pid] = procInfo{ppid, pgid, fields[0] == "Z" || fields[0] == "X"}
	}
	return found
}

// realUID is from /proc/PID/status: unlike the owner of /proc/PID, true even for a
// non-dumpable process.
func realUID(pid int) (uint32, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "Uid:") {
			f := strings.Fields(line)
			if len(f) < 2 {
				return 0, false
			}
			v, err := strconv.ParseUint(f[1], 10, 32)
			return uint32(v), err == nil
		}
	}
	return 0, false
}

func groupMembers(pgid int) int {
	n := 0
	for _, p := range scan() {
		if p.pgid == pgid && !p.zombie {
			n++
		}
	}
	return n
}

// killGroup SIGKILLs a group until it is empty; it loops because a fork bomb keeps forking.
func killGroup(pgid int) {
	end := time.Now().Add(killBound)
	for {
		syscall.Kill(-pgid, syscall.SIGKILL)
		if groupMembers(pgid) == 0 || time.Now().After(end) {
			return
		}
		time.Sleep(killNap)
	}
}

// sweep kills, until none is left (for at most killBound), every process of the sandbox
// user that no running child accounts for, and reaps adopted orphans. spareRunning false
// kills the user's running calls too (grading takes the sandbox over: run_tests).
func sweep(id Identity, spareRunning bool) {
	uid, byUID := id.strayUID()
	if !byUID && !subreaper {
		return // neither a uid nor a tree to go by
	}
	end := time.Now().Add(killBound)
	for {
		procMu.Lock()
		procs := scan()
		strays := findStrays(procs, uid, byUID, spareRunning)
		killStrays(strays, procs)
		if subreaper {
			for pid, p := range procs {
				if p.ppid == me && p.zombie && !running[pid] {
					var ws syscall.WaitStatus
					syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
				}
			}
		}
		procMu.Unlock()
		if len(strays) == 0 || time.Now().After(end) {
			return
		}
		time.Sleep(killNap)
	}
}

func findStrays(procs map[int]procInfo, uid uint32, byUID, spareRunning bool) []int {
	spared := map[int]bool{}
	if spareRunning {
		spared = accountedFor(procs)
	}
	var found []int
	for pid, p := range procs {
		if pid == me || p.zombie || spared[pid] {
			continue
		}
		if byUID {
			if u, ok := realUID(pid); ok && u == uid {
				found = append(found, pid)
				continue
			}
		}
		if subreaper && descends(pid, me, procs) {
			found = append(found, pid)
		}
	}
	return found
}

// accountedFor: running children, their process groups, and everything below them.
func accountedFor(procs map[int]procInfo) map[int]bool {
	children := map[int][]int{}
	var todo []int
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
		if running[pid] || running[p.pgid] {
			todo = append(todo, pid)
		}
	}
	seen := map[int]bool{}
	for len(todo) > 0 {
		pid := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		if !seen[pid] {
			seen[pid] = true
			todo = append(todo, children[pid]...)
		}
	}
	return seen
}

func descends(pid, ancestor int, procs map[int]procInfo) bool {
	for range procs { // bounded: ppid links read at different moments may loop
		p, ok := procs[pid]
		if !ok || p.ppid <= 1 {
			return false
		}
		if p.ppid == ancestor {
			return true
		}
		pid = p.ppid
	}
	return false
}

func killStrays(strays []int, procs map[int]procInfo) {
	chosen := map[int]bool{}
	groups := map[int]bool{}
	for _, pid := range strays {
		syscall.Kill(pid, syscall.SIGKILL)
		chosen[pid] = true
		groups[procs[pid].pgid] = true
	}
	// A group of strays only is killed whole too, in one step: a fork bomb's new children
	// are born into it between the scan and the kills above.
	for pgid := range groups {
		whole := pgid > 1
		for pid, p := range procs {
			if p.pgid == pgid && !p.zombie && !chosen[pid] {
				whole = false
				break
			}
		}
		if whole {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}
}

// becomeSubreaper adopts orphans when the user's processes cannot be told by uid. Once, first.
func becomeSubreaper(id Identity) {
	if _, byUID := id.strayUID(); byUID {
		return // found by uid; init (docker's) keeps reaping orphans at once
	}
	_, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	subreaper = e == 0
}
