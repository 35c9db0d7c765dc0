// run_tests' run (tests.go): the test command started with the report pipe, the pipe read
// while it runs, and the results read once every process of the user is dead.
package main

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// --- the run -------------------------------------------------------------------------------

// reportsFD is the number the report pipe has in the command: the next after the standard
// three and the BASH_ENV script's (spawnGraded puts it there).
func reportsFD() int {
	if sh, err := findShell(); err == nil && sh.name == "bash" && bashEnv.usable {
		return 4
	}
	return 3
}

// runGraded is runShell with the test environment and the report pipe: a ShellReply, or the
// error of a command that could not start.
func runGraded(r testsRequest, workdir string, id Identity, extra *jobj, reports *reportPipe) obj {
	defer reports.closeWriteEnd()
	oomBefore, oomOK := oomCounter()
	started := time.Now()
	env := commandEnv(id, extra)
	c, err := launchGraded(r.command, pathJoin(workdir, workdir), id, env, reports.w)
	if err != nil {
		return startErrorReply("could not start the command: ", err)
	}
	reports.closeWriteEnd() // the command has its own copy: the pipe ends when every holder is gone
	buf := NewHeadTailBuffer(r.cap)
	timedOut, ws := runCommand(c, id, []*pipeReader{readPipe(c.stdout, buf)}, deadlineAfter(started, r.timeout))
	return commandReply(ws, timedOut, oomBefore, oomOK, started,
		kv{"output", buf.Text()}, kv{"output_bytes", buf.Total}, kv{"truncated_bytes", buf.Dropped()})
}

// launchGraded is launch (shell.go) for the test command, with the report pipe's write end
// passed as one more descriptor.
func launchGraded(command, cwd string, id Identity, env []string, reportsW *os.File) (*child, error) {
	return launch([]string{"bash", "-c", command}, cdThenRun, []string{command}, cwd, id, env, stderrMerged, reportsW.Fd())
}

// reportPipe is the plugin's channel: a pipe, not a file, so nothing can rewrite what was
// sent; a goroutine reads while the tests run (a full pipe would block the plugin). Code of
// the agent's that runs after the session ends can only add lines after the plugin's
// "finish" line, which the grader ignores.
type reportPipe struct {
	r, w   *os.File
	data   []byte
	done   chan struct{}
	closed bool
}

func newReportPipe() (*reportPipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p := &reportPipe{r: r, w: w, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		chunk := make([]byte, chunkSize)
		for {
			n, err := r.Read(chunk)
			if room := maxResultsBytes - len(p.data); room > 0 { // past the cap: drain, keep nothing
				if n > room {
					n = room
				}
				p.data = append(p.data, chunk[:n]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return p, nil
}

func (p *reportPipe) closeWriteEnd() {
	if !p.closed {
		p.closed = true
		p.w.Close()
	}
}

// collect is everything sent, once every writer is gone (the sweep killed them).
func (p *reportPipe) collect() string {
	t := time.NewTimer(reportsWait)
	select {
	case <-p.done:
	case <-t.C:
		p.r.SetReadDeadline(time.Unix(1, 0)) // wakes the parked Read
		<-p.done
	}
	t.Stop()
	p.r.Close()
	return decodeUTF8Replace(p.data)
}

// --- reading what the runner produced (its processes are all dead by now) ------------------

// readCapped is a regular file's first limit bytes as text; ok false when absent, a symlink
// or not a regular file. err: a read that failed once open.
func readCapped(path string, limit int) (text string, ok bool, err error) {
	if strings.ContainsRune(path, 0) {
		return "", false, internalError("ValueError: embedded null byte")
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return "", false, nil
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return "", false, nil
	}
	buf := make([]byte, 0, 4096)
	chunk := make([]byte, chunkSize)
	for len(buf) < limit {
		want := limit - len(buf)
		if want > len(chunk) {
			want = len(chunk)
		}
		n, err := syscall.Read(fd, chunk[:want])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return "", false, internalError("OSError: " + pyOSErrorText(err))
		}
		if n <= 0 {
			break
		}
		buf = append(buf, chunk[:n]...)
	}
	return decodeUTF8Replace(buf), true, nil
}

// junitReports: the XML files the runner left directly in the results directory, within
// maxResultsBytes in all (counted as the text's UTF-8).
func junitReports(results string) []string {
	reports := []string{}
	d, err := os.Open(results)
	if err != nil {
		return reports
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return reports
	}
	sort.Strings(names)
	if len(names) > 64 {
		names = names[:64]
	}
	budget := maxResultsBytes
	for _, name := range names {
		if !strings.HasSuffix(name, ".xml") || budget <= 0 {
			continue
		}
		text, ok, err := readCapped(filepath.Join(results, name), budget)
		if err != nil {
			break
		}
		if ok {
			reports = append(reports, text)
			budget -= len(text)
		}
	}
	return reports
}

// pyOSErrorText is how Python prints an OSError: "[Errno N] strerror: 'path'", with
// " -> 'target'" for two paths.
func pyOSErrorText(err error) string {
	var pe *os.PathError
	var le *os.LinkError
	var se *os.SyscallError
	switch {
	case errors.As(err, &pe):
		return pyOSError(pe.Err) + ": " + pyStrRepr(pe.Path)
	case errors.As(err, &le):
		return pyOSError(le.Err) + ": " + pyStrRepr(le.Old) + " -> " + pyStrRepr(le.New)
	case errors.As(err, &se):
		return pyOSError(se.Err)
	}
	return pyOSError(err)
}
