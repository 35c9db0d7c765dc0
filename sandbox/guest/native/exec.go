// The exec op (the trainer API): a program or a bash command with its own cwd and
// environment, stdout and stderr kept apart. Shell's guarantees hold, kept
// the same way: the user switch, a group of its own, the deadline and the kill until the
// group is empty, the sweep, the OOM score.
package main

import (
	"strings"
	"time"
)

// Every program starts under bash, so that BASH_ENV (or the wrapper) raises its OOM score
// first; `exec` then replaces bash with it. A cwd the user cannot enter stops the command:
// a trainer that names a directory means that one, unlike a model's shell call that always
// starts in the workspace.
const (
	runArgv       = `exec "$@"`
	cdThenArgv    = `cd -- "$1" || exit 1; shift; exec "$@"`
	cdThenCommand = `cd -- "$1" || exit 1; exec bash -c "$2"`
)

type execFields struct {
	argv    []string // or command
	command string
	env     *jobj
	merge   bool
}

func execRequestFields(req *jobj) (f execFields, err error) {
	argv, command := req.get("argv"), req.get("command")
	if (argv == nil) == (command == nil) {
		return f, badRequest("exec needs exactly one of 'argv' (a list of strings) and 'command' (a string)")
	}
	if argv != nil {
		list, ok := argv.([]any)
		if !ok || len(list) == 0 {
			return f, badRequest("'argv' must be a non-empty list of strings without NUL characters")
		}
		for _, a := range list {
			s, ok := a.(string)
			if !ok || strings.ContainsRune(s, 0) {
				return f, badRequest("'argv' must be a non-empty list of strings without NUL characters")
			}
			f.argv = append(f.argv, s)
		}
	} else {
		s, ok := command.(string)
		if !ok || strings.ContainsRune(s, 0) {
			return f, badRequest("'command' must be a string without NUL characters")
		}
		f.command = s
	}
	if env := req.get("env"); truthy(env) {
		o, ok := env.(*jobj)
		if !ok {
			return f, badRequest("'env' must map names (no '=' or NUL) to strings (no NUL)")
		}
		for _, k := range o.keys {
			v, ok := o.vals[k].(string)
			if k == "" || strings.ContainsAny(k, "=\x00") || !ok || strings.ContainsRune(v, 0) {
				return f, badRequest("'env' must map names (no '=' or NUL) to strings (no NUL)")
			}
		}
		f.env = o
	}
	if merge := req.get("merge_stderr"); truthy(merge) {
		if _, ok := merge.(bool); !ok {
			return f, badRequest("'merge_stderr' must be true or false")
		}
		f.merge = true
	}
	return f, nil
}

func startExec(f execFields, cwd string, id Identity) (*child, error) {
	env := commandEnv(id, f.env)
	mode := stderrPipe
	if f.merge {
		mode = stderrMerged
	}
	if f.argv != nil {
		direct := append([]string{"bash", "-c", runArgv, "bash"}, f.argv...)
		return launch(direct, cdThenArgv, f.argv, cwd, id, env, mode)
	}
	return launch([]string{"bash", "-c", f.command}, cdThenCommand, []string{f.command}, cwd, id, env, mode)
}

func runExec(req *jobj, workdir string, id Identity) (obj, error) {
	f, err := execRequestFields(req)
	if err != nil {
		return nil, err
	}
	timeout, err := numberField(req, "timeout", DefaultTimeout)
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		return nil, badRequest("'timeout' must be positive")
	}
	cap, err := capField(req)
	if err != nil {
		return nil, err
	}
	cwd := workdir
	if v := req.get("cwd"); truthy(v) {
		s, ok := v.(string)
		if !ok || strings.ContainsRune(s, 0) {
			return nil, badRequest("'cwd' must be a string without NUL characters, or null")
		}
		cwd = s
	}
	oomBefore, oomOK := oomCounter()
	started := time.Now()
	c, err := startExec(f, pathJoin(workdir, cwd), id)
	if err != nil { // EAGAIN: the pids limit, used up by the sandbox's own processes
		return startErrorReply("could not start the command: ", err), nil
	}
	out, errBuf := NewHeadTailBuffer(cap), NewHeadTailBuffer(cap)
	readers := []*pipeReader{readPipe(c.stdout, out)}
	if c.stderr != nil {
		readers = append(readers, readPipe(c.stderr, errBuf))
	}
	timedOut, ws := runCommand(c, id, readers, deadlineAfter(started, timeout))
	return commandReply(ws, timedOut, oomBefore, oomOK, started,
		kv{"stdout", out.Text()},
		kv{"stderr", errBuf.Text()},
		kv{"stdout_bytes", out.Total},
		kv{"stderr_bytes", errBuf.Total},
		kv{"stdout_truncated_bytes", out.Dropped()},
		kv{"stderr_truncated_bytes", errBuf.Dropped()},
	), nil
}
