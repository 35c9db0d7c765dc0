// What upload and download start and wait for (transfer.go): the image's programs or this
// binary in their place, the helper as the user, its deadline, its messages, its end.
package main

import (
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// --- the programs --------------------------------------------------------------------------

var gnuTarFound struct {
	once sync.Once
	path string
}

// gnuTar is the image's GNU tar, or "" (busybox's lacks --no-overwrite-dir): asked once,
// as the guest.
func gnuTar() string {
	gnuTarFound.once.Do(func() {
		for _, p := range []string{"/bin/tar", "/usr/bin/tar"} {
			if syscall.Access(p, 1) == nil && isGNUTar(p) { // X_OK
				gnuTarFound.path = p
				return
			}
		}
	})
	return gnuTarFound.path
}

func isGNUTar(path string) bool {
	c, err := spawn(spawnSpec{path: path, argv: []string{path, "--version"}, dir: "/", env: []string{"LC_ALL=C"}})
	if err != nil {
		return false
	}
	out := make([]byte, 0, 4096)
	c.stdout.SetReadDeadline(time.Now().Add(10 * time.Second))
	chunk := make([]byte, 4096)
	for len(out) < 64*1024 {
		n, err := c.stdout.Read(chunk)
		out = append(out, chunk[:n]...)
		if err != nil {
			break
		}
	}
	c.stdout.Close()
	if !hasExited(c.pid) {
		syscall.Kill(c.pid, syscall.SIGKILL)
	}
	killGroup(c.pid)
	ws, _ := waitChild(c.pid, 0)
	forget(c.pid)
	return ws.Exited() && strings.Contains(string(out), "GNU tar")
}

var self struct {
	once sync.Once
	path string
}

// selfPath is this binary, for the helper modes (transfer_modes.go); "" when it cannot be named.
func selfPath() string {
	self.once.Do(func() {
		if p, err := os.Executable(); err == nil {
			self.path = p
		}
	})
	return self.path
}

// hasCat: the helpers' PATH finds a cat (busybox's applet counts).
func hasCat() bool {
	_, err := lookPath("cat")
	return err == nil
}

func helperEnv(id Identity) []string {
	return []string{"PATH=" + pathEnv, "HOME=" + id.Home, "USER=" + id.Name, "LOGNAME=" + id.Name, "LC_ALL=C"}
}

// helperSpec: bash -c SCRIPT as the user, in /, raising its OOM score first like every command.
func helperSpec(script string, args []string, id Identity, mode stderrMode) (spawnSpec, error) {
	sh, err := findShell()
	if err != nil {
		return spawnSpec{}, err
	}
	argv := append([]string{sh.name, "-c", oomFirst + script, sh.name}, args...)
	return spawnSpec{path: sh.path, argv: argv, dir: "/", env: helperEnv(id), ident: id, stderr: mode}, nil
}

// spawnFed is spawn (procs.go) with stdin a pipe the guest feeds (an upload's writer).
func spawnFed(spec spawnSpec) (*child, *os.File, error) {
	spec.feedStdin = true
	c, err := spawn(spec)
	if err != nil {
		return nil, nil, err
	}
	return c, c.stdin, nil
}

func setPipeSize(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil { // not f.Fd(): that would make it blocking
		rc.Control(func(fd uintptr) { syscall.Syscall(syscall.SYS_FCNTL, fd, fSetPipeSize, FrameMax) })
	}
}

// --- waiting and cleaning up ---------------------------------------------------------------

// watchdog kills a helper's group at the deadline; fired says whether it did.
type watchdog struct {
	timer *time.Timer
	fired atomic.Bool
	done  chan struct{}
}

func watch(pid int, deadline time.Time) *watchdog {
	w := &watchdog{done: make(chan struct{})}
	w.timer = time.AfterFunc(time.Until(deadline), func() {
		defer close(w.done)
		w.fired.Store(true)
		killGroup(pid)
	})
	return w
}

// cancel returns once the watchdog can no longer touch the group (before the leader is reaped
// and its pid may be reused).
func (w *watchdog) cancel() {
	if !w.timer.Stop() {
		<-w.done
	}
}

// finish waits for the helper until the deadline, then leaves nothing of it (or of the user's)
// behind; its return code as Popen's.
func finish(c *child, id Identity, deadline time.Time, w *watchdog) int {
	for !hasExited(c.pid) {
		wake := childEvents.next()
		left := time.Until(deadline)
		if left <= 0 {
			syscall.Kill(c.pid, syscall.SIGKILL)
			break
		}
		if left > 50*time.Millisecond {
			left = 50 * time.Millisecond // a safety net only: SIGCHLD wakes us
		}
		t := time.NewTimer(left)
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
	killGroup(c.pid)
	w.cancel()
	ws, _ := waitChild(c.pid, 0)
	forget(c.pid)
	sweep(id, true)
	return returnCode(ws)
}

// collector reads a helper's message pipe to its end, keeping head and tail.
type collector struct {
	f    *os.File
	buf  *HeadTailBuffer
	done chan struct{}
}

func collect(f *os.File) *collector {
	c := &collector{f: f, buf: NewHeadTailBuffer(messageCap), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		chunk := make([]byte, chunkSize)
		for {
			n, err := f.Read(chunk)
			c.buf.Write(chunk[:n])
			if err != nil {
				return
			}
		}
	}()
	return c
}

// text waits for the end of the messages (at most 2 s: only the helper's group held the pipe).
func (c *collector) text() string {
	c.f.SetReadDeadline(time.Now().Add(2 * time.Second))
	<-c.done
	c.f.Close()
	return pyStrip(c.buf.Text())
}
