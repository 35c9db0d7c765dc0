// The guest's wire protocol, version 1. sandbox/guest/guest_protocol.py is the one
// specification (its docstring: transport, modes, ops, errors, guarantees); this file only
// mirrors its constants, which tests/unit/test_guest.py compares with guest_protocol.py's,
// and names the replies' fields.
package main

import "fmt"

const (
	Version = 1 // VERSION: what ping reports

	OpPing     = "ping"
	OpShell    = "shell"
	OpReadFile = "read_file"
	OpRunTests = "run_tests"
	OpExec     = "exec"
	OpUpload   = "upload"   // guest_protocol_stream.py
	OpDownload = "download" // guest_protocol_stream.py

	MaxRequest      = 4 * 1024 * 1024  // bytes of one request line, its newline included
	DefaultTimeout  = 60.0             // shell, exec: seconds
	DefaultCap      = 65536            // output_cap: bytes
	MaxOutputCap    = 16 * 1024 * 1024 // bounds the guest's memory whatever the client asks
	MaxFileRead     = 64 * 1024 * 1024 // read_file reads no further
	BinaryProbe     = 8192             // read_file: a NUL byte in this many first bytes means binary
	ReadFileTimeout = 20.0             // read_file: seconds the reader may take (a FIFO swapped in blocks)
)

// The statuses a read_file reply can have (READ_FILE_STATUSES).
const (
	StatusOK               = "ok"
	StatusNotFound         = "not_found"
	StatusIsADirectory     = "is_a_directory"
	StatusNotARegularFile  = "not_a_regular_file"
	StatusPermissionDenied = "permission_denied"
	StatusBinary           = "binary"
	StatusInvalidRange     = "invalid_range"
	StatusUnreadable       = "unreadable"
)

// streamOps move raw bytes after (upload) or before (download) their reply line; serve mode
// only, on a connection of their own (guest_protocol_stream.py).
var streamOps = map[string]bool{OpUpload: true, OpDownload: true}

// badRequest is a request the client got wrong: answered {"error": message}.
type badRequest string

func (b badRequest) Error() string { return string(b) }

func badRequestf(format string, args ...any) badRequest {
	return badRequest(fmt.Sprintf(format, args...))
}

// errorReply is ErrorReply without its optional fields.
func errorReply(message string) obj { return obj{{"error", message}} }

// startErrorReply is the error of a command or reader that could not be started: retryable
// when the start failed for want of a resource (after the retries of spawn), pids_exhausted
// when that resource is the container's pids limit, used up by the sandbox's own processes
// (nothing else runs there), which the host side then takes for the model's doing.
func startErrorReply(prefix string, err error) obj {
	return obj{
		{"error", prefix + pyOSError(err)},
		{"retryable", isRetryable(err)},
		{"pids_exhausted", errnoOf(err) == eagain},
	}
}

func pingReply(pid int) obj {
	return obj{{"ok", true}, {"version", Version}, {"pid", pid}}
}
