// The run_tests op: grade the workspace the agent left by running hidden tests in it
// (guest_tests.py, whose docstring has the steps; docs/grading-threat-model.md has the why).
//
// The agent's code is hostile here. In this order, as root, while none of its processes runs:
// every process of the user is killed; the restore paths, every test-configuration file (a
// workdir too big to search fails closed), every runner-shadowing top-level name and the
// distribution metadata where sys.path will look are put back to the base (tests_stage.go,
// tests_config.go); what Python would import instead of a module the stage put in place, and
// an __init__.py the base lacks that would make the hidden tests a package of the agent's, are
// removed (tests_shadow.go); the hidden files are written root-owned; every
// __pycache__ in the workdir is removed; a fresh results directory, HOME and plugin directory are made
// and the reward directory emptied; the command runs with a fixed environment and our pytest
// plugin, whose reports come back over a pipe; then every process of the user is killed again,
// and only then are the results read, without following symlinks.
//
// The plugin is embedded (this binary is mounted alone into any image) and written anew for
// every run into a root-owned directory the user can read and not write.
package main

import (
	_ "embed"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

//go:embed pytest_plugin/sandbox_results.py
var pytestPlugin []byte

const (
	testsDefaultTimeout = 300.0           // seconds
	maxResultsBytes     = 2 * 1024 * 1024 // of reports, and of JUnit XML in all
	maxRewardBytes      = 4096
	reportsWait         = 5 * time.Second // for the report pipe's end, once every writer is killed
	pluginFile          = "sandbox_results.py"
)

// Where grading reads and writes: variables only so that the Go tests can point them at a
// temporary directory.
var (
	baseDir    = "/opt/sandbox-base/workdir" // the workspace as the environment defines it
	gradingDir = "/run/sandbox-grading"
	hiddenRoot = "/tests" // absolute hidden files may only go here (Harbor's layout)
)

// testsRequest: a run_tests request, checked.
type testsRequest struct {
	command    string
	timeout    float64
	cap        int
	restore    []string
	files      []hiddenFile
	rewardFile string // "" for none
	rewardDir  string
}

type hiddenFile struct {
	path    string
	content []byte
}

func runTests(req *jobj, workdir string, id Identity) (obj, error) {
	r, err := testsFields(req, workdir)
	if err != nil {
		return nil, err
	}
	var owner *[2]int // the user's, for what it gets to own (only root can give it)
	if id.Switch {
		owner = &[2]int{int(id.UID), int(id.GID)}
	}

	started := time.Now()
	sweep(id, false)
	results, home, plugin, err := prepare(workdir, r, owner)
	if err != nil {
		var bad badRequest
		var internal internalError
		if errors.As(err, &bad) || errors.As(err, &internal) {
			return nil, err
		}
		// e.g. the agent filled the disk: the sandbox's state, not ours
		return obj{{"error", "could not set up the tests: " + pyOSErrorText(err)}, {"setup_failed", true}}, nil
	}
	setupMs := roundMillis(time.Since(started).Seconds())
	reports, err := newReportPipe()
	if err != nil {
		return nil, internalError("OSError: " + pyOSErrorText(err))
	}
	env := &jobj{vals: map[string]any{}}
	for _, e := range [][2]string{
		{"SANDBOX_REPORTS_FD", strconv.Itoa(reportsFD())},
		{"HOME", home},
		{"PYTHONNOUSERSITE", "1"},
		{"PYTHONDONTWRITEBYTECODE", "1"},
		{"PYTHONPATH", plugin},
		{"PYTEST_ADDOPTS", "-p sandbox_results -p no:cacheprovider --junitxml=" + results + "/pytest-junit.xml"},
		{"SANDBOX_TEST_RESULTS", results},
	} {
		env.keys = append(env.keys, e[0])
		env.vals[e[0]] = e[1]
	}
	reply := runGraded(r, workdir, id, env, reports)
	sweep(id, false) // nothing left behind may rewrite what is read below
	text := reports.collect()
	if reply[0].k == "error" {
		return reply, nil
	}
	reward := any(nil)
	if r.rewardFile != "" {
		if s, ok, err := readCapped(r.rewardFile, maxRewardBytes); err != nil {
			return nil, err
		} else if ok {
			reward = s
		}
	}
	return append(reply,
		kv{"reports", text},
		kv{"junit", junitReports(results)},
		kv{"reward", reward},
		kv{"setup_ms", setupMs},
	), nil
}

// internalError is answered as "internal error: <type>: <message>", in the words the
// protocol has always used for a failure that is not an OS error (Python's exception names).
type internalError string

func (e internalError) Error() string { return string(e) }

// --- the request ---------------------------------------------------------------------------

func testsFields(req *jobj, workdir string) (r testsRequest, err error) {
	command, ok := req.get("command").(string)
	if !ok || command == "" || strings.ContainsRune(command, 0) {
		return r, badRequest("run_tests needs a non-empty string 'command' without NUL")
	}
	r.command = command
	if r.timeout, err = numberField(req, "timeout", testsDefaultTimeout); err != nil {
		return r, err
	}
	if r.timeout <= 0 {
		return r, badRequest("'timeout' must be positive")
	}
	if r.cap, err = capField(req); err != nil {
		return r, err
	}
	if r.restore, err = stringList(req, "restore"); err != nil {
		return r, err
	}
	if r.files, err = hiddenFiles(req); err != nil {
		return r, err
	}
	if v := req.get("reward_file"); v != nil {
		if r.rewardFile, ok = v.(string); !ok {
			return r, badRequest("'reward_file' must be a string or null")
		}
	}
	if r.rewardFile != "" {
		r.rewardDir, err = rewardDirOf(r.rewardFile, workdir)
	}
	return r, err
}

// stringList: absent, null or empty is none; else a list of non-empty strings without NUL.
func stringList(req *jobj, name string) ([]string, error) {
	v := req.get(name)
	if !truthy(v) {
		return nil, nil
	}
	list, ok := v.([]any)
	var out []string
	for _, item := range list {
		s, isStr := item.(string)
		if !isStr || s == "" || strings.ContainsRune(s, 0) {
			ok = false
			break
		}
		out = append(out, s)
	}
	if !ok {
		return nil, badRequestf("'%s' must be a list of non-empty strings", name)
	}
	return out, nil
}

func hiddenFiles(req *jobj) ([]hiddenFile, error) {
	v := req.get("files")
	if !truthy(v) {
		return nil, nil
	}
	o, ok := v.(*jobj)
	if !ok {
		return nil, badRequest("'files' must be an object of path -> base64 content")
	}
	var out []hiddenFile
	for _, path := range o.keys {
		content, ok := o.vals[path].(string)
		if !ok || strings.ContainsRune(path, 0) {
			return nil, badRequestf("'files': %s must map to base64 text", pyStrRepr(path))
		}
		data, err := pyB64Decode(content)
		if err != nil {
			return nil, badRequestf("'files': %s is not base64: %s", pyStrRepr(path), err.Error())
		}
		out = append(out, hiddenFile{path, data})
	}
	return out, nil
}

// pyB64Decode is Python 3.11's base64.b64decode(s, validate=True) (binascii's strict mode),
// with its error messages.
func pyB64Decode(s string) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return nil, errors.New("string argument should contain only ASCII characters")
		}
	}
	if len(s) > 0 && s[0] == '=' {
		return nil, errors.New("Leading padding not allowed")
	}
	var out []byte
	var acc uint32
	quad, pads, padding := 0, 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '=' {
			padding = true
			pads++
			if quad >= 2 && quad+pads >= 4 {
				if i+1 < len(s) {
					return nil, errors.New("Excess data after padding")
				}
				return out, nil
			}
			continue
		}
		v := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/", c)
		if v < 0 {
			return nil, errors.New("Only base64 data is allowed")
		}
		if padding {
			return nil, errors.New("Discontinuous padding not allowed")
		}
		pads = 0
		acc = acc<<6 | uint32(v)
		quad = (quad + 1) % 4
		switch quad {
		case 2:
			out = append(out, byte(acc>>4))
		case 3:
			out = append(out, byte(acc>>2))
		case 0:
			out = append(out, byte(acc))
			acc = 0
		}
	}
	switch quad {
	case 0:
		return out, nil
	case 1:
		n := len(out)/3*4 + 1
		return nil, errors.New("Invalid base64-encoded string: number of data characters (" + strconv.Itoa(n) +
			") cannot be 1 more than a multiple of 4")
	}
	return nil, errors.New("Incorrect padding")
}

// protectedRoots: the reward file's directory is emptied before the run, so it is never one
// of these or below them.
var protectedRoots = []string{"/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/proc",
	"/run", "/sbin", "/sys", "/usr", "/var"}

func rewardDirOf(rewardFile, workdir string) (string, error) {
	if !strings.HasPrefix(rewardFile, "/") {
		return "", badRequest("'reward_file' must be an absolute path")
	}
	parts, err := pathParts(rewardFile)
	if err != nil {
		return "", err
	}
	dir := "/" + strings.Join(parts[:len(parts)-1], "/")
	protected := len(parts) < 3
	for _, root := range protectedRoots {
		protected = protected || dir == root || strings.HasPrefix(dir, root+"/")
	}
	if protected {
		return "", badRequestf("'reward_file' %s must lie in a directory of its own, e.g. /logs/verifier",
			pyStrRepr(rewardFile))
	}
	work := filepath.Clean(workdir)
	if work == dir || strings.HasPrefix(work, dir+"/") || strings.HasPrefix(dir, work+"/") {
		return "", badRequest("'reward_file' must not lie in the workdir, nor its directory hold the workdir")
	}
	return dir, nil
}

// pathParts: a path's components, without "" and "."; none at all, or "..", is refused.
func pathParts(path string) ([]string, error) {
	var parts []string
	for _, p := range strings.Split(path, "/") {
		if p == ".." {
			return nil, badRequestf("path %s must name something below its root, without '..'", pyStrRepr(path))
		}
		if p != "" && p != "." {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return nil, badRequestf("path %s must name something below its root, without '..'", pyStrRepr(path))
	}
	return parts, nil
}
