// The stream ops upload and download: bytes in and out of the sandbox, as the user
// (the protocol: guest_protocol_stream.py).
//
// The guest never opens the user's files itself. A small program started the way commands
// are (bash -c, raising its OOM score first, then cat or tar), as the user, leader of a group
// of its own and swept like one, does the writing or reading; the guest only pipes the bytes
// between the connection and that program, and a failure's message is the writer's own
// words (cat's, mkdir's, tar's), which the status is read from.
//
// Where the image lacks a program, this binary stands in, run as the user like the program
// (transfer_modes.go): for cat (`copy`, and files.go's `cat`), and for tar wherever the image
// has no GNU tar (`tar`, `untar`). GNU tar is still used where it exists: its messages are the
// ones an agent (and a test) knows.
package main

import (
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	TransferTimeout = 300.0              // seconds, when the request names none
	MaxDownload     = 1024 * 1024 * 1024 // bytes sent at most when the request names no limit
	FrameMax        = 1024 * 1024        // a download frame's bytes at most
	fSetPipeSize    = 1031               // F_SETPIPE_SZ: a 1 MiB pipe moves a stream in fewer, larger reads
	messageCap      = 4096               // head + tail of a helper's messages
)

// The helpers' scripts; $1 is always the absolute path.
const (
	// $2 the mode in octal or "". Missing parents are made, as the user.
	writeFile = `d=${1%/*}; mkdir -p -- "${d:-/}" && cat > "$1" && { [ -z "$2" ] || chmod -- "$2" "$1"; }`
	// --no-overwrite-dir: a directory that exists keeps its owner and mode.
	untarGNU = `mkdir -p -- "$1" && cd -- "$1" && exec "$2" -x -f - --no-overwrite-dir --no-same-owner`
	catFile  = `exec cat -- "$1"`
	tarGNU   = `cd -- "$1" && exec "$2" -c -f - .`
	// This binary standing in: $3 (writeFileSelf) or $2 is its path.
	writeFileSelf = `d=${1%/*}; mkdir -p -- "${d:-/}" && "$3" copy > "$1" && { [ -z "$2" ] || chmod -- "$2" "$1"; }`
	untarSelf     = `mkdir -p -- "$1" && cd -- "$1" && exec "$2" untar`
	catSelf       = `exec "$2" cat -- "$1"`
	tarSelf       = `cd -- "$1" && exec "$2" tar`
)

// messageStatuses: the writer's or reader's own words (LC_ALL=C) -> the status, most telling
// first: a full disk also makes tar complain about every member after it.
var messageStatuses = []struct{ words, status string }{
	{"No space left on device", "no_space"},
	{"Disk quota exceeded", "no_space"},
	{"File too large", "no_space"},
	{"Permission denied", "permission_denied"},
	{"Operation not permitted", "permission_denied"},
	{"Is a directory", "is_a_directory"},
	{"Not a directory", "not_a_directory"},
	{"File exists", "not_a_directory"},
	{"does not look like a tar archive", "invalid_archive"},
	{"Unexpected EOF in archive", "invalid_archive"},
	{"ReadError", "invalid_archive"},
	{"No such file or directory", "not_found"},
}

func statusOf(message string) string {
	for _, m := range messageStatuses {
		if strings.Contains(message, m.words) {
			return m.status
		}
	}
	return "failed"
}

// --- requests ------------------------------------------------------------------------------

// transferFields: path and timeout; target is the absolute path.
func transferFields(req *jobj, workdir string) (target string, timeout float64, err error) {
	path, ok := req.get("path").(string)
	if !ok || path == "" || strings.ContainsRune(path, 0) {
		return "", 0, badRequest("'path' must be a non-empty string without NUL characters")
	}
	if timeout, err = numberField(req, "timeout", TransferTimeout); err != nil {
		return "", 0, err
	}
	if timeout <= 0 {
		return "", 0, badRequest("'timeout' must be positive")
	}
	return pyNormpath(pathJoin(workdir, path)), timeout, nil
}

// pyNormpath is Python's posixpath.normpath: filepath.Clean, except that exactly two leading
// slashes stay two (POSIX leaves their meaning to the system).
func pyNormpath(p string) string {
	if p == "" {
		return "."
	}
	double := strings.HasPrefix(p, "//") && !strings.HasPrefix(p, "///")
	parts := []string{}
	for _, part := range strings.Split(p, "/") {
		switch {
		case part == "" || part == ".":
		case part != ".." || (!strings.HasPrefix(p, "/") && len(parts) == 0) || (len(parts) > 0 && parts[len(parts)-1] == ".."):
			parts = append(parts, part)
		case len(parts) > 0:
			parts = parts[:len(parts)-1]
		}
	}
	out := strings.Join(parts, "/")
	if double {
		out = "//" + out
	} else if strings.HasPrefix(p, "/") {
		out = "/" + out
	}
	if out == "" {
		return "."
	}
	return out
}

// serveStream answers an upload or a download on its connection: a bad request with an error
// line, an upload after reading its bytes, a download after its frames.
func serveStream(conn *net.UnixConn, req *jobj, rest []byte, workdir string, id Identity) obj {
	var reply obj
	var err error
	if name, _ := req.get("op").(string); name == OpUpload {
		reply, err = serveUpload(conn, req, rest, workdir, id)
	} else {
		reply, err = serveDownload(conn, req, workdir, id)
	}
	if err != nil {
		return errorReply(err.Error())
	}
	return reply
}

// frameHeader announces a frame of size bytes (0: the end of the data).
func frameHeader(size int) []byte { return []byte(strconv.FormatInt(int64(size), 16) + "\n") }

// writeFrames writes to the client within the stall timeout; false: it went away (or stalled).
func writeFrames(conn *net.UnixConn, parts ...[]byte) bool {
	conn.SetWriteDeadline(time.Now().Add(stallTimeout))
	bufs := net.Buffers(parts)
	_, err := bufs.WriteTo(conn)
	return err == nil
}

// --- upload --------------------------------------------------------------------------------

// uploadFields: kind, size (and its text, which a message prints whatever its size), mode (""
// or octal digits), checked in this order after path and timeout (the first bad field is named).
func uploadFields(req *jobj) (kind string, size int64, sizeText, mode string, err error) {
	kind, _ = req.get("kind").(string)
	if kind != "file" && kind != "tar" {
		return "", 0, "", "", badRequest("'kind' must be 'file' or 'tar'")
	}
	n, ok := req.get("size").(json.Number)
	if !ok || !isIntLiteral(n) || bigInt(n).Sign() < 0 {
		return "", 0, "", "", badRequest("'size' must be a non-negative integer")
	}
	size, sizeText = clampInt64(bigInt(n)), bigInt(n).String()
	if v := req.get("mode"); v != nil {
		m, ok := v.(json.Number)
		if !ok || !isIntLiteral(m) || bigInt(m).Sign() < 0 || bigInt(m).Cmp(big.NewInt(0o7777)) > 0 {
			return "", 0, "", "", badRequest("'mode' must be an integer from 0 to 0o7777, or null")
		}
		mode = strconv.FormatInt(bigInt(m).Int64(), 8)
	}
	return kind, size, sizeText, mode, nil
}

func uploadReply(status, target string, received int64, message string) obj {
	return obj{{"status", status}, {"path", target}, {"bytes", received}, {"message", message}}
}

// writerScript: the script and its arguments for an upload of kind into target.
func writerScript(kind, target, mode string) (string, []string) {
	switch {
	case kind == "file" && hasCat():
		return writeFile, []string{target, mode}
	case kind == "file":
		return writeFileSelf, []string{target, mode, selfPath()}
	case gnuTar() != "":
		return untarGNU, []string{target, gnuTar()}
	}
	return untarSelf, []string{target, selfPath()}
}

// upstream reads the upload's bytes from the connection: first those that came with the request
// line, then reads of at most FrameMax, never past size, each within the stall timeout and the
// deadline.
type upstream struct {
	conn     *net.UnixConn
	rest     []byte
	buf      []byte
	deadline time.Time
}

// next: the next bytes, or nil with why the stream ended ("" at its end, ": why" when broken).
func (u *upstream) next(left int64) ([]byte, string) {
	if len(u.rest) > 0 {
		n := int64(len(u.rest))
		if n > left {
			n = left
		}
		data := u.rest[:n]
		u.rest = u.rest[n:]
		return data, ""
	}
	if left > FrameMax {
		left = FrameMax
	}
	stall := time.Now().Add(stallTimeout)
	if u.deadline.Before(stall) {
		stall = u.deadline
	}
	u.conn.SetReadDeadline(stall)
	n, err := u.conn.Read(u.buf[:left])
	if n > 0 {
		return u.buf[:n], ""
	}
	switch {
	case err == nil, err == io.EOF:
		return nil, ""
	case errors.Is(err, os.ErrDeadlineExceeded):
		return nil, ": timed out" // socket.timeout's words; at the deadline, timed_out is the answer
	}
	return nil, ": " + pyOSError(err)
}

// serveUpload reads the request's size bytes into a writer running as the user and answers
// one line; all size bytes are read even when writing failed early.
func serveUpload(conn *net.UnixConn, req *jobj, rest []byte, workdir string, id Identity) (obj, error) {
	target, timeout, err := transferFields(req, workdir)
	if err != nil {
		return nil, err
	}
	kind, size, sizeText, mode, err := uploadFields(req)
	if err != nil {
		return nil, err
	}
	deadline := deadlineAfter(time.Now(), timeout)
	up := &upstream{conn: conn, rest: rest, buf: make([]byte, FrameMax), deadline: deadline}
	script, args := writerScript(kind, target, mode)
	spec, err := helperSpec(script, args, id, stderrMerged)
	var c *child
	var stdin *os.File
	if err == nil {
		c, stdin, err = spawnFed(spec)
	}
	if err != nil {
		for left := size; left > 0 && time.Now().Before(deadline); { // so that the client reads the answer
			data, _ := up.next(left)
			if data == nil {
				break
			}
			left -= int64(len(data))
		}
		return uploadReply("failed", target, size, "could not start the writer: "+pyOSError(err)), nil
	}
	messages := collect(c.stdout)
	w := watch(c.pid, deadline)
	received, writing, broken := int64(0), true, ""
	stdin.SetWriteDeadline(deadline)
	for received < size && time.Now().Before(deadline) {
		data, why := up.next(size - received)
		if data == nil {
			broken = why // the client stopped sending: what arrived is not the whole thing
			break
		}
		received += int64(len(data))
		if writing {
			if _, err := stdin.Write(data); err != nil {
				writing = false // the writer failed (or the deadline killed it); keep reading
			}
		}
	}
	stdin.Close()
	rc := finish(c, id, deadline, w)
	text := messages.text()
	switch {
	case w.fired.Load() || (received < size && !time.Now().Before(deadline)):
		return uploadReply("timed_out", target, received, "not done within "+pyFloatG(timeout)+" s"), nil
	case received < size:
		message := "the stream ended after " + strconv.FormatInt(received, 10) + " of " + sizeText + " bytes" + broken
		return uploadReply("failed", target, received, message), nil
	case rc != 0:
		if text == "" {
			text = "the writer failed (exit " + strconv.Itoa(rc) + ")"
		}
		return uploadReply(statusOf(text), target, received, text), nil
	}
	return uploadReply("ok", target, received, ""), nil
}

// --- download ------------------------------------------------------------------------------

func downloadReply(status, kind string, sent int64, message string) obj {
	return obj{{"status", status}, {"kind", kind}, {"bytes", sent}, {"message", message}}
}

// readerScript: cat for a file, tar for a directory (members ./...), or this binary instead.
func readerScript(kind, target string) (string, []string) {
	switch {
	case kind == "file" && hasCat():
		return catFile, []string{target}
	case kind == "file":
		return catSelf, []string{target, selfPath()}
	case gnuTar() != "":
		return tarGNU, []string{target, gnuTar()}
	}
	return tarSelf, []string{target, selfPath()}
}

// serveDownload sends the file's bytes, or the directory as a tar stream, in frames; then the
// reply. A client that goes away (or stalls) mid-stream gets nothing more: the connection is
// closed before the reply.
func serveDownload(conn *net.UnixConn, req *jobj, workdir string, id Identity) (obj, error) {
	target, timeout, err := transferFields(req, workdir)
	if err != nil {
		return nil, err
	}
	limit, err := intField(req, "max_bytes", MaxDownload)
	if err != nil {
		return nil, err
	}
	deadline := deadlineAfter(time.Now(), timeout)
	kind := "file"
	if st, err := os.Stat(target); err == nil { // the type only; the reader, as the user, says what else is wrong
		if st.IsDir() {
			kind = "directory"
		} else if !st.Mode().IsRegular() {
			writeFrames(conn, frameHeader(0))
			return downloadReply("not_a_regular_file", "file", 0, "not a regular file: "+target), nil
		}
	}
	script, args := readerScript(kind, target)
	spec, err := helperSpec(script, args, id, stderrPipe)
	var c *child
	if err == nil {
		c, err = spawn(spec)
	}
	if err != nil {
		writeFrames(conn, frameHeader(0))
		return downloadReply("failed", kind, 0, "could not start the reader: "+pyOSError(err)), nil
	}
	messages := collect(c.stderr)
	w := watch(c.pid, deadline)
	setPipeSize(c.stdout)
	c.stdout.SetReadDeadline(deadline.Add(killBound + 5*time.Second)) // a safety net: the watchdog ends the stream
	sent, tooLarge, gone := int64(0), false, false
	buf := make([]byte, FrameMax)
	for {
		n, err := c.stdout.Read(buf)
		if n > 0 {
			if sent+int64(n) > limit {
				tooLarge = true
				killGroup(c.pid)
				break
			}
			if !writeFrames(conn, frameHeader(n), buf[:n]) {
				gone = true
				break
			}
			sent += int64(n)
		}
		if err != nil {
			break
		}
	}
	if !gone && !writeFrames(conn, frameHeader(0)) {
		gone = true
	}
	if gone {
		conn.Close() // no reply after a broken frame
	}
	c.stdout.Close()
	rc := finish(c, id, deadline, w)
	text := messages.text()
	switch {
	case tooLarge:
		return downloadReply("too_large", kind, sent, target+" is larger than "+strconv.FormatInt(limit, 10)+" bytes"), nil
	case w.fired.Load():
		return downloadReply("timed_out", kind, sent, "not done within "+pyFloatG(timeout)+" s"), nil
	case rc != 0 && !(kind == "directory" && rc == 1): // tar's 1: a file changed while read
		status := statusOf(text)
		if status != "not_found" && status != "permission_denied" {
			status = "failed"
		}
		if text == "" {
			text = "the reader failed (exit " + strconv.Itoa(rc) + ")"
		}
		return downloadReply(status, kind, sent, text), nil
	}
	return downloadReply("ok", kind, sent, ""), nil
}
