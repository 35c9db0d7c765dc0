// Serving requests: serve mode on a unix socket, once mode through `docker exec`, and the
// dispatch both share.
package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

const stallTimeout = 60 * time.Second // a client that never finishes its request must not pin a goroutine forever

// opHandler runs one op for an identity already resolved.
type opHandler func(req *jobj, workdir string, id Identity) (obj, error)

// ops: the ops answered through handle (upload and download stream, and are served apart).
var ops = map[string]opHandler{
	OpShell:    runShell,
	OpReadFile: readFile,
	OpExec:     runExec,
	OpRunTests: runTests,
}

// handle dispatches one decoded request; every failure becomes an {"error": ...} answer.
func handle(req any, workdir, user string) (reply obj) {
	defer func() {
		if r := recover(); r != nil { // never let one request take the server down
			os.Stderr.WriteString(fmt.Sprintf("guest: internal error: %v\n%s", r, debug.Stack()))
			reply = errorReply(fmt.Sprintf("internal error: %v", r))
		}
	}()
	o, ok := req.(*jobj)
	if !ok {
		return errorReply("request must be a JSON object")
	}
	op := o.get("op")
	if op == OpPing {
		return pingReply(os.Getpid())
	}
	name, _ := op.(string)
	if streamOps[name] {
		return errorReply(name + " streams its bytes on a connection of its own: serve mode only")
	}
	handler := ops[name]
	if handler == nil {
		return errorReply("unknown op: " + pyStr(op))
	}
	id, err := resolveIdentity(user)
	if err != nil {
		return errorReply("no such user: " + user)
	}
	reply, err = handler(o, workdir, id)
	if err != nil {
		var bad badRequest
		if errors.As(err, &bad) {
			return errorReply(string(bad))
		}
		return errorReply("internal error: " + err.Error())
	}
	return reply
}

// --- serve mode ----------------------------------------------------------------------------

type server struct {
	workdir, user string
}

// serve binds the socket privately (0600) and serves until SIGTERM.
func serve(sockPath, workdir, user string) int {
	abs, err := filepath.Abs(sockPath)
	if err != nil {
		return fatal(err)
	}
	if err := makeDirs(filepath.Dir(abs)); err != nil {
		return fatal(err)
	}
	if _, err := os.Lstat(sockPath); err == nil {
		if err := os.Remove(sockPath); err != nil {
			return fatal(err)
		}
	}
	adoptOrphans(user)
	warmUp(workdir, user)       // before the socket exists: ready means fast from the first call
	old := syscall.Umask(0o177) // no window where the socket is group/world accessible
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return fatal(err)
	}
	// gVisor (runsc --host-uds=create) makes the socket on the host and refuses a chmod of it
	// from inside; the umask made it 0600 already, in the worker's 0700 directory.
	if err := os.Chmod(sockPath, 0o600); err != nil && !errors.Is(err, os.ErrPermission) {
		return fatal(err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ln.Close()
		os.Remove(sockPath)
		os.Exit(0)
	}()
	s := &server{workdir, user}
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				select {} // SIGTERM: the goroutine above exits
			}
			time.Sleep(10 * time.Millisecond) // out of descriptors, say: try again shortly
			continue
		}
		// A goroutine, not a thread: starting one never fails for want of pids, so the
		// protocol's NO_THREAD answer has no case here.
		go s.serveConn(conn)
	}
}

// makeDirs is os.makedirs(path, 0o700, exist_ok=True): the socket's own directory is private.
func makeDirs(dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o777); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// serveConn: one JSON line in, one JSON line out, then close.
func (s *server) serveConn(conn *net.UnixConn) {
	defer conn.Close()
	defer func() {
		if r := recover(); r != nil { // never let one connection take the server down
			os.Stderr.WriteString(fmt.Sprintf("guest: error while serving a request: %v\n", r))
		}
	}()
	line, rest, ok := readRequestLine(conn)
	if !ok || len(line) == 0 {
		return // client went away or stalled; nothing to answer
	}
	var reply obj
	if len(line) > MaxRequest {
		reply = errorReply("request too large (limit 4 MiB)")
	} else if req, err := decodeJSON(line); err != nil {
		reply = errorReply("request is not valid JSON")
	} else if o, ok := req.(*jobj); ok && isStreamOp(o) {
		reply = s.stream(conn, o, rest)
	} else {
		reply = handle(req, s.workdir, s.user)
	}
	conn.SetWriteDeadline(time.Now().Add(stallTimeout))
	conn.Write(encodeReply(reply))
}

func isStreamOp(o *jobj) bool {
	name, _ := o.get("op").(string)
	return streamOps[name]
}

// stream answers upload and download, which move raw bytes on their connection
// (guest_protocol_stream.py; transfer.go). A bad request is answered at once, alone.
func (s *server) stream(conn *net.UnixConn, o *jobj, rest []byte) obj {
	id, err := resolveIdentity(s.user)
	if err != nil {
		return errorReply("no such user: " + s.user)
	}
	return serveStream(conn, o, rest, s.workdir, id)
}

// readRequestLine reads up to and including the first newline (or to the end of the stream,
// when the client shut down its write side), at most MaxRequest + 1 bytes: more is too
// large. A read that stalls for stallTimeout ends the connection without an answer. rest is
// what came after the newline (an upload's first bytes).
func readRequestLine(conn *net.UnixConn) (line, rest []byte, ok bool) {
	var acc []byte
	chunk := make([]byte, chunkSize)
	for {
		conn.SetReadDeadline(time.Now().Add(stallTimeout))
		n, err := conn.Read(chunk)
		if n > 0 {
			from := len(acc)
			acc = append(acc, chunk[:n]...)
			if i := bytes.IndexByte(acc[from:], '\n'); i >= 0 {
				end := from + i + 1
				return acc[:end], acc[end:], true
			}
			if len(acc) > MaxRequest {
				return acc[:MaxRequest+1], nil, true
			}
		}
		if err == io.EOF {
			return acc, nil, true
		}
		if err != nil {
			return nil, nil, false
		}
	}
}

// adoptOrphans: before the first command, a subreaper when the user's processes cannot be
// told by uid.
func adoptOrphans(user string) {
	if id, err := resolveIdentity(user); err == nil { // no such user: every request says so
		becomeSubreaper(id)
	}
}

// --- once mode -----------------------------------------------------------------------------

// once is the `docker exec` fallback: exit 2 only when the request itself is undecodable.
func once(encoded, workdir, user string) int {
	adoptOrphans(user)
	req, err := decodeOnce(encoded)
	if err != nil {
		os.Stdout.Write(encodeReply(errorReply("could not decode the request: " + err.Error())))
		return 2
	}
	os.Stdout.Write(encodeReply(handle(req, workdir, user)))
	return 0
}

// decodeOnce is base64.b64decode(validate=True) then json.loads, and an object.
func decodeOnce(encoded string) (any, error) {
	trimmed := strings.TrimRight(encoded, "=")
	if len(encoded)-len(trimmed) > 2 || strings.IndexFunc(trimmed, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '+' || r == '/')
	}) >= 0 {
		return nil, errors.New("Non-base64 digit found")
	}
	data, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, errors.New("Incorrect padding")
	}
	req, err := decodeJSON(data)
	if err != nil {
		return nil, err
	}
	if _, ok := req.(*jobj); !ok {
		return nil, errors.New("not an object")
	}
	return req, nil
}

func fatal(err error) int {
	os.Stderr.WriteString("guest: " + err.Error() + "\n")
	return 1
}
