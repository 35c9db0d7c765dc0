// The read_file op: selected lines of a text file, with statuses an agent can act on.
//
// The file is read by a program running as the sandbox user, started the way commands are,
// so the kernel checks the user's permissions, symlinks and /proc included: the guest itself
// never opens the file. cat when the image has one, else this binary in its `cat` mode
// (main.go), which says what went wrong the way cat does.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// readerEnv: C, so the reader's messages are in English (they are parsed below).
var readerEnv = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}

// errorStatuses maps the reader's error (strerror, last on its stderr line) to a status.
var errorStatuses = map[string]string{
	"Permission denied":         StatusPermissionDenied,
	"Operation not permitted":   StatusPermissionDenied,
	"No such file or directory": StatusNotFound,
	"Not a directory":           StatusNotFound,
	"Is a directory":            StatusIsADirectory,
	"No such device or address": StatusNotARegularFile,
}

func fileResult(status, message string, buf *HeadTailBuffer, totalLines int64) obj {
	content, total, dropped := "", int64(0), int64(0)
	if buf != nil {
		content, total, dropped = buf.Text(), buf.Total, buf.Dropped()
	}
	return obj{
		{"status", status},
		{"content", content},
		{"total_lines", totalLines},
		{"output_bytes", total},
		{"truncated_bytes", dropped},
		{"message", message},
	}
}

// specialFile: a device, FIFO or socket, answered without being opened (a FIFO would block,
// a device may act on open). Only its type is learnt here, as the guest; all else as the user.
func specialFile(path string) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false // the reader, as the user, says what is wrong
	}
	return !(st.Mode().IsRegular() || st.IsDir())
}

// readerCommand: cat, or this binary as its own reader.
func readerCommand(path string) (string, []string, error) {
	for _, p := range []string{"/bin/cat", "/usr/bin/cat"} {
		if syscall.Access(p, 1) == nil { // X_OK
			return p, []string{"cat", "--", path}, nil
		}
	}
	self, err := os.Executable()
	if err != nil {
		return "", nil, &startError{errno: syscall.ENOENT, filename: "cat"}
	}
	return self, []string{"sandbox-guest", "cat", "--", path}, nil
}

// lineRange is start_line..end_line as asked: nil is "not given". Python compares them as
// unbounded ints; so do the range checks here, and the selection uses them clamped.
type lineRange struct{ start, end *big.Int }

func lineField(req *jobj, name string) (*big.Int, error) {
	v := req.get(name)
	if v == nil {
		return nil, nil
	}
	n, ok := v.(json.Number)
	if !ok || !isIntLiteral(n) {
		return nil, badRequestf("'%s' must be an integer or null", name)
	}
	return bigInt(n), nil
}

// deadlineReader is a read on the reader's pipe that fails with os.ErrDeadlineExceeded at
// the deadline instead of blocking.
type deadlineReader struct{ f *os.File }

func (d deadlineReader) read(size int, buf []byte) ([]byte, error) {
	n, err := d.f.Read(buf[:size])
	if n > 0 {
		return buf[:n], nil
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, nil // end of file (or the pipe failed): no more bytes
	}
	return nil, err
}

// selectLines streams the file once: it copies lines first..last into buf and counts all
// lines. It returns (total lines, NUL in the probe window, the read limit was hit).
func selectLines(r deadlineReader, buf *HeadTailBuffer, first, last int64) (int64, bool, bool, error) {
	line, offset, endsWithNewline := int64(1), 0, true
	scratch := make([]byte, chunkSize)
	for offset < MaxFileRead {
		size := chunkSize
		if MaxFileRead-offset < size {
			size = MaxFileRead - offset
		}
		chunk, err := r.read(size, scratch)
		if err != nil {
			return 0, false, false, err
		}
		if len(chunk) == 0 {
			break
		}
		if offset < BinaryProbe {
			probe := chunk
			if len(probe) > BinaryProbe-offset {
				probe = probe[:BinaryProbe-offset]
			}
			if bytes.IndexByte(probe, 0) >= 0 {
				return 0, true, false, nil
			}
		}
		offset += len(chunk)
		endsWithNewline = chunk[len(chunk)-1] == '\n'
		newlines := int64(bytes.Count(chunk, []byte{'\n'}))
		if first <= line && line+newlines <= last {
			buf.Write(chunk)
		} else if line <= last && line+newlines >= first {
			pos := 0
			for _, piece := range bytes.Split(chunk, []byte{'\n'}) {
				end := pos + len(piece) + 1
				if end > len(chunk) {
					end = len(chunk)
				}
				if first <= line && line <= last {
					buf.Write(chunk[pos:end])
				}
				pos, line = end, line+1
			}
			line--
			continue
		}
		line += newlines
	}
	total := line
	if endsWithNewline {
		total = line - 1
	}
	clipped := false
	if offset >= MaxFileRead {
		more, err := r.read(1, scratch)
		if err != nil {
			return 0, false, false, err
		}
		clipped = len(more) > 0
	}
	return total, false, clipped, nil
}

func readFile(req *jobj, workdir string, id Identity) (obj, error) {
	shown, ok := req.get("path").(string)
	if !ok || shown == "" || strings.ContainsRune(shown, 0) {
		return nil, badRequest("read_file needs a non-empty string 'path' without NUL characters")
	}
	start, err := lineField(req, "start_line")
	if err != nil {
		return nil, err
	}
	end, err := lineField(req, "end_line")
	if err != nil {
		return nil, err
	}
	cap, err := capField(req)
	if err != nil {
		return nil, err
	}
	path := pathJoin(workdir, shown)
	if specialFile(path) {
		return fileResult(StatusNotARegularFile, "not a regular file: "+shown, nil, 0), nil
	}
	prog, argv, err := readerCommand(path)
	var c *child
	if err == nil {
		c, err = spawn(spawnSpec{path: prog, argv: argv, dir: "/", env: readerEnv, ident: id, stderr: stderrPipe})
	}
	if err != nil {
		return startErrorReply("could not start reading "+shown+": ", err), nil
	}
	stderrText := collectStderr(c.stderr)
	buf := NewHeadTailBuffer(cap)
	first, last := int64(1), int64(math.MaxInt64)
	if start != nil {
		first = clampInt64(start)
	}
	if end != nil {
		last = clampInt64(end)
	}
	c.stdout.SetReadDeadline(time.Now().Add(time.Duration(ReadFileTimeout * float64(time.Second))))
	total, binary, clipped, err := selectLines(deadlineReader{c.stdout}, buf, first, last)
	timedOut := err != nil
	rc := finishReader(c, binary || clipped || timedOut)
	errText := pyStrip(decodeUTF8Replace(stderrText()))
	if binary {
		return fileResult(StatusBinary, "binary file (NUL byte in the first 8 KiB): "+shown, nil, 0), nil
	}
	if timedOut {
		return fileResult(StatusUnreadable, "could not read "+shown+": no end after "+pyFloatG(ReadFileTimeout)+" s", nil, 0), nil
	}
	if rc != 0 && !clipped {
		return readerFailed(shown, errText, rc), nil
	}
	note := ""
	if clipped {
		note = " (only the first " + strconv.Itoa(MaxFileRead>>20) + " MiB were read)"
	}
	firstB := big.NewInt(1)
	if start != nil {
		firstB = start
	}
	totalB := big.NewInt(total)
	if firstB.Cmp(big.NewInt(1)) < 0 || (end != nil && end.Cmp(firstB) < 0) || (firstB.Cmp(totalB) > 0 && total > 0) {
		endText := "end"
		if end != nil {
			endText = end.String()
		}
		message := "invalid line range " + firstB.String() + "-" + endText + ": " + shown + " has " + strconv.FormatInt(total, 10) + " lines" + note
		return fileResult(StatusInvalidRange, message, nil, total), nil
	}
	return fileResult(StatusOK, strings.Trim(note, " ()"), buf, total), nil
}

// collectStderr reads the reader's stderr to its end on a goroutine; the function it returns
// waits for that (at most 2 s: only the reader holds the pipe) and gives the first 4 KiB.
func collectStderr(f *os.File) func() []byte {
	var kept []byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := make([]byte, 4096)
		for {
			n, err := f.Read(chunk)
			if n > 0 && len(kept) < 4096 {
				room := 4096 - len(kept)
				if n < room {
					room = n
				}
				kept = append(kept, chunk[:room]...)
			}
			if err != nil {
				return
			}
		}
	}()
	return func() []byte {
		f.SetReadDeadline(time.Now().Add(2 * time.Second))
		<-done
		f.Close()
		return kept
	}
}

// finishReader waits for the reader; it kills it first when the guest stopped reading
// before its end (or it hangs).
func finishReader(c *child, early bool) int {
	c.stdout.Close()
	reaped := false
	var ws syscall.WaitStatus
	if !early { // it wrote its end, so it is exiting
		ws, reaped = waitChild(c.pid, 2*time.Second)
	}
	if !reaped {
		if !hasExited(c.pid) { // never signal a reaped pid
			syscall.Kill(c.pid, syscall.SIGKILL)
		}
		ws, _ = waitChild(c.pid, 0)
	}
	forget(c.pid)
	return returnCode(ws)
}

// readerFailed: the status of a failed read, from the reader's own words ("cat: PATH: strerror").
func readerFailed(shown, errText string, rc int) obj {
	reason := ""
	if errText != "" {
		lines := pySplitlines(errText)
		lastLine := ""
		if len(lines) > 0 {
			lastLine = lines[len(lines)-1]
		}
		if i := strings.LastIndex(lastLine, ": "); i >= 0 {
			reason = lastLine[i+2:]
		} else {
			reason = lastLine
		}
	}
	switch status := errorStatuses[reason]; status {
	case StatusPermissionDenied:
		return fileResult(status, "permission denied: "+shown, nil, 0)
	case StatusNotFound:
		return fileResult(status, "no such file: "+shown, nil, 0)
	case StatusIsADirectory:
		return fileResult(status, "is a directory: "+shown, nil, 0)
	case StatusNotARegularFile:
		return fileResult(status, "not a regular file: "+shown, nil, 0)
	}
	why := reason
	if why == "" {
		if rc < 0 {
			why = "the reader was killed by signal " + strconv.Itoa(-rc)
		} else {
			why = "the reader failed (exit " + strconv.Itoa(rc) + ")"
		}
	}
	return fileResult(StatusUnreadable, "could not read "+shown+": "+why, nil, 0)
}

// pyFloatG is Python's format(x, "g") for the few constants messages quote (20.0 -> "20").
func pyFloatG(f float64) string {
	return strconv.FormatFloat(f, 'g', 6, 64)
}

// catMain is this binary as read_file's reader when the image has no cat: the file's bytes
// on stdout, or "cat: PATH: strerror" on stderr and exit 1, as cat says it.
func catMain(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) != 1 {
		os.Stderr.WriteString("usage: sandbox-guest cat -- PATH\n")
		return 2
	}
	path := args[0]
	fail := func(err error) int {
		en := errnoOf(err)
		text := err.Error()
		if en != 0 {
			text = strerror(en)
		}
		os.Stderr.WriteString("cat: " + path + ": " + text + "\n")
		return 1
	}
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	return pumpToStdout(fd, fail, fail)
}

// pumpToStdout copies fd to stdout until its end: 0, or what readFail or writeFail make of the
// first error (the cat stand-ins of files.go and transfer_modes.go, each in cat's own words).
func pumpToStdout(fd int, readFail, writeFail func(error) int) int {
	buf := make([]byte, chunkSize)
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return readFail(err)
		}
		if n == 0 {
			return 0
		}
		for off := 0; off < n; {
			w, err := syscall.Write(1, buf[off:n])
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return writeFail(err)
			}
			off += w
		}
	}
}
