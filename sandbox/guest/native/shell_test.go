package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// oom_killed needs both a SIGKILL without a timeout and the OOM counter grown meanwhile.
func TestOOMEvidenceNeedsSigkillAndACounterIncrease(t *testing.T) {
	n := int64(0)
	oomCounter = func() (int64, bool) { n++; return n, true }
	defer func() { oomCounter = readOOMCount }()
	dir := t.TempDir()
	run := func(js string) obj {
		req, err := decodeJSON([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return handle(req, dir, "")
	}
	if r := run(`{"op": "shell", "command": "kill -KILL $$", "timeout": 5}`); field(r, "oom_killed") != true {
		t.Fatalf("%v", r)
	}
	if r := run(`{"op": "shell", "command": "exit 1", "timeout": 5}`); field(r, "oom_killed") != false {
		t.Fatalf("%v", r)
	}
	r := run(`{"op": "shell", "command": "sleep 5", "timeout": 0.2}`)
	if field(r, "timed_out") != true || field(r, "oom_killed") != false {
		t.Fatalf("%v", r)
	}
	if r := run(`{"op": "exec", "command": "kill -KILL $$", "timeout": 5}`); field(r, "oom_killed") != true {
		t.Fatalf("%v", r)
	}
	oomCounter = func() (int64, bool) { return 3, true } // unchanged
	if r := run(`{"op": "shell", "command": "kill -KILL $$", "timeout": 5}`); field(r, "oom_killed") != false {
		t.Fatalf("%v", r)
	}
	oomCounter = func() (int64, bool) { return 0, false } // no counter readable
	if r := run(`{"op": "shell", "command": "kill -KILL $$", "timeout": 5}`); field(r, "oom_killed") != false {
		t.Fatalf("%v", r)
	}
}

func TestCommandEnvKeepsPlacesAndAddsInOrder(t *testing.T) {
	v, _ := decodeJSON([]byte(`{"Z": "1", "PATH": "/bin", "A": "2", "BASH_ENV": "x"}`))
	env := commandEnv(Identity{Name: "u", Home: "/h"}, v.(*jobj))
	want := []string{"PATH=/bin", "HOME=/h", "USER=u", "LOGNAME=u", "LANG=C.UTF-8", "TERM=dumb", "SHELL=/bin/bash", "Z=1", "A=2"}
	if bashEnv.usable {
		want = append(want, "BASH_ENV="+bashEnvPath)
	} else {
		want = append(want, "BASH_ENV=x")
	}
	if len(env) != len(want) {
		t.Fatalf("%q", env)
	}
	for i := range want {
		if env[i] != want[i] {
			t.Fatalf("%q", env)
		}
	}
}

// Both roads give a command the OOM score 1000 and no BASH_ENV: the memfd script, and the
// wrapper used where it cannot be (warmUp's probe decides).
func TestCommandsGetTheOOMScoreWithOrWithoutTheScript(t *testing.T) {
	usable := bashEnv.usable
	defer func() { bashEnv.usable = usable }()
	for _, withScript := range []bool{true, false} {
		if withScript && !usable {
			continue
		}
		bashEnv.usable = withScript
		for _, js := range []string{
			// Descriptors are tested with bash's own `[`: a pipeline's listing of /proc/$$/fd would
			// race bash closing its pipe ends, and fail on a loaded machine.
			`{"op": "shell", "command": "cat /proc/self/oom_score_adj; echo ${BASH_ENV-none}; for n in 3 4 5 6; do [ -e /proc/$$/fd/$n ] && echo fd $n open; done; echo end"}`,
			`{"op": "exec", "command": "cat /proc/self/oom_score_adj; echo ${BASH_ENV-none}; for n in 3 4 5 6; do [ -e /proc/$$/fd/$n ] && echo fd $n open; done; echo end"}`,
		} {
			req, _ := decodeJSON([]byte(js))
			r := handle(req, t.TempDir(), "")
			out := field(r, "output")
			if out == nil {
				out = field(r, "stdout")
			}
			if out != "1000\nnone\nend\n" { // bash has only 0, 1 and 2: fd 3 (the script) is closed
				t.Fatalf("script %v: %v", withScript, r)
			}
		}
	}
}

// An image without bash (busybox's): commands run under sh, with the OOM score, no BASH_ENV
// and no extra descriptor, through the wrapper whatever the cwd; a shell call whose output
// shows it needed bash ends with one line that says so, and only then.
func TestWithoutBashCommandsRunUnderShAndSaySoWhenTheyNeedBash(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on this machine")
	}
	dirs := searchDirs
	defer func() { searchDirs = dirs }()
	bin := t.TempDir()
	if err := os.Symlink(sh, filepath.Join(bin, "sh")); err != nil {
		t.Fatal(err)
	}
	searchDirs = []string{bin}
	run := func(js string) obj {
		req, err := decodeJSON([]byte(js))
		if err != nil {
			t.Fatal(err)
		}
		return handle(req, t.TempDir(), "")
	}
	// dash keeps a descriptor of its own (10): fd 3, the BASH_ENV script's, is what must be shut.
	probe := `cat /proc/self/oom_score_adj; echo ${BASH_ENV-none} $SHELL; ls /proc/$$/fd/3 2>/dev/null || echo no fd 3`
	if r := run(`{"op": "shell", "command": "` + probe + `"}`); field(r, "output") != "1000\nnone "+filepath.Join(bin, "sh")+"\nno fd 3\n" {
		t.Fatalf("%v", r)
	}
	if r := run(`{"op": "exec", "command": "echo $0"}`); field(r, "stdout") != "sh\n" || field(r, "exit_code") != 0 {
		t.Fatalf("%v", r)
	}
	if r := run(`{"op": "exec", "argv": ["echo", "a b"]}`); field(r, "stdout") != "a b\n" {
		t.Fatalf("%v", r)
	}
	for command, needs := range map[string]bool{
		`echo hi | tr a-z A-Z; exit 3`:      false,
		`nosuchprogram`:                     false, // 127, but nothing bash would have had
		`x=ab; echo ${x^^}`:                 true,  // bad substitution
		`a=(1 2); echo ${a[1]}`:             true,  // syntax error
		`shopt -s nullglob`:                 true,
		`printf 'no newline'; declare -A m`: true,
	} {
		req := &jobj{keys: []string{"op", "command"}, vals: map[string]any{"op": "shell", "command": command}}
		r := handle(req, t.TempDir(), "")
		out := field(r, "output").(string)
		if strings.HasSuffix(out, "\n"+noBashNote) != needs || strings.Count(out, noBashNote) > 1 {
			t.Fatalf("%q: %v", command, r)
		}
		if field(r, "output_bytes") != int64(len(out)) {
			t.Fatalf("%q: output_bytes: %v", command, r)
		}
	}
	searchDirs = dirs // bash again: no note, whatever the output
	if r := run(`{"op": "shell", "command": "echo syntax error: bad substitution"}`); field(r, "output") != "syntax error: bad substitution\n" {
		t.Fatalf("%v", r)
	}
}
