package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

func failingStarts(t *testing.T) *int {
	calls := 0
	startHook = func(string, []string, *syscall.ProcAttr) (int, error) {
		calls++
		return 0, syscall.EAGAIN
	}
	t.Cleanup(func() { startHook = nil })
	return &calls
}

func field(reply obj, key string) any {
	for _, e := range reply {
		if e.k == key {
			return e.v
		}
	}
	return nil
}

// A start that keeps failing with EAGAIN is retried for about 1 s, then reported retryable.
func TestForkFailureIsRetriedThenReportedRetryable(t *testing.T) {
	calls := failingStarts(t)
	req, _ := decodeJSON([]byte(`{"op": "shell", "command": "true", "timeout": 5}`))
	started := time.Now()
	reply := handle(req, "/", "")
	if d := time.Since(started); d < 900*time.Millisecond || d > 15*time.Second {
		t.Fatalf("took %v", d)
	}
	if msg := field(reply, "error").(string); msg != "could not start the command: [Errno 11] Resource temporarily unavailable" {
		t.Fatalf("%q", msg)
	}
	if field(reply, "retryable") != true || field(reply, "pids_exhausted") != true || *calls <= 5 {
		t.Fatalf("%v after %d calls", reply, *calls)
	}
}

// A read_file reader that cannot start is an error reply saying the pids are used up.
func TestAReaderThatCannotStartIsReportedPidsExhausted(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(dir+"/f.txt", []byte("x\n"), 0o644)
	failingStarts(t)
	req, _ := decodeJSON([]byte(`{"op": "read_file", "path": "f.txt"}`))
	reply := handle(req, dir, "")
	if msg := field(reply, "error").(string); !strings.HasPrefix(msg, "could not start reading f.txt: [Errno 11] ") {
		t.Fatalf("%q", msg)
	}
	if field(reply, "retryable") != true || field(reply, "pids_exhausted") != true {
		t.Fatalf("%v", reply)
	}
}

func TestANonResourceFailureIsNotRetried(t *testing.T) {
	calls := 0
	startHook = func(string, []string, *syscall.ProcAttr) (int, error) {
		calls++
		return 0, syscall.EACCES
	}
	defer func() { startHook = nil }()
	req, _ := decodeJSON([]byte(`{"op": "exec", "argv": ["true"]}`))
	reply := handle(req, t.TempDir(), "")
	if field(reply, "retryable") != false || field(reply, "pids_exhausted") != false || calls > 2 { // no retries: direct (where searchable by all), then the wrapper
		t.Fatalf("%v after %d calls", reply, calls)
	}
	if msg := field(reply, "error").(string); msg != "could not start the command: [Errno 13] Permission denied: 'bash'" {
		t.Fatalf("%q", msg)
	}
}
