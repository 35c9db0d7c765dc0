package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestPyNormpath(t *testing.T) {
	for in, want := range map[string]string{
		"": ".", "/": "/", "//": "//", "///": "/", "//a/../b": "//b", "/w/./a//b/": "/w/a/b",
		"/w/../..": "/", "a/../..": "..", "../a": "../a", "/w/a/..": "/w",
	} {
		if got := pyNormpath(in); got != want {
			t.Errorf("pyNormpath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStatusOfTakesTheMostTellingWords(t *testing.T) {
	msg := "tar: a: Cannot write: No space left on device\ntar: b: Cannot open: Permission denied"
	if got := statusOf(msg); got != "no_space" {
		t.Errorf("statusOf = %q", got)
	}
	if got := statusOf("something else"); got != "failed" {
		t.Errorf("statusOf = %q", got)
	}
}

// helper runs this test binary in one of its helper modes (init dispatches them).
func helper(t *testing.T, mode, dir string, stdin []byte) ([]byte, string, error) {
	cmd := exec.Command(os.Args[0], mode)
	cmd.Dir, cmd.Stdin = dir, bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.Bytes(), errb.String(), err
}

func TestTarAndUntarModesRoundTrip(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "d", "e"), 0o755)
	os.WriteFile(filepath.Join(src, "d", "e", "f.txt"), []byte("deep\n"), 0o640)
	os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\n"), 0o755)
	os.Symlink("run.sh", filepath.Join(src, "link"))
	os.Link(filepath.Join(src, "run.sh"), filepath.Join(src, "hard"))
	archive, msgs, err := helper(t, "tar", src, nil)
	if err != nil {
		t.Fatalf("tar: %v %s", err, msgs)
	}
	if _, msgs, err := helper(t, "untar", dst, archive); err != nil {
		t.Fatalf("untar: %v %s", err, msgs)
	}
	if data, _ := os.ReadFile(filepath.Join(dst, "d", "e", "f.txt")); string(data) != "deep\n" {
		t.Errorf("f.txt = %q", data)
	}
	if link, _ := os.Readlink(filepath.Join(dst, "link")); link != "run.sh" {
		t.Errorf("link -> %q", link)
	}
	a, _ := os.Stat(filepath.Join(dst, "run.sh"))
	b, _ := os.Stat(filepath.Join(dst, "hard"))
	if a == nil || b == nil || !os.SameFile(a, b) || a.Mode().Perm()&0o100 == 0 {
		t.Errorf("run.sh and hard: %v %v", a, b)
	}
	_, msgs, err = helper(t, "untar", dst, []byte(strings.Repeat("not a tar ", 100)))
	if err == nil || !strings.Contains(msgs, "does not look like a tar archive") {
		t.Errorf("untar of garbage: %v %q", err, msgs)
	}
}

func TestCopyModeSaysWriteErrorsAsCat(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	cmd := exec.Command("sh", "-c", `"$0" copy >/dev/full`, os.Args[0])
	cmd.Stdin = strings.NewReader("x")
	out, err := cmd.CombinedOutput()
	if err == nil || string(out) != "cat: write error: No space left on device\n" {
		t.Errorf("copy to /dev/full: %v %q", err, out)
	}
}
