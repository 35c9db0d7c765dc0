package main

import (
	"testing"
)

// As test_guest.py's test_oom_evidence_needs_sigkill_and_a_counter_increase.
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
			`{"op": "shell", "command": "cat /proc/self/oom_score_adj; echo ${BASH_ENV-none}; ls /proc/$$/fd | wc -l"}`,
			`{"op": "exec", "command": "cat /proc/self/oom_score_adj; echo ${BASH_ENV-none}; ls /proc/$$/fd | wc -l"}`,
		} {
			req, _ := decodeJSON([]byte(js))
			r := handle(req, t.TempDir(), "")
			out := field(r, "output")
			if out == nil {
				out = field(r, "stdout")
			}
			if out != "1000\nnone\n3\n" { // bash's 0, 1 and 2: fd 3 is closed
				t.Fatalf("script %v: %v", withScript, r)
			}
		}
	}
}
