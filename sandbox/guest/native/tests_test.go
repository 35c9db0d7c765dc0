package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Python 3.11's base64.b64decode(s, validate=True) on the same strings (results and messages
// taken from it).
func TestBase64AsPythonDecodesIt(t *testing.T) {
	cases := map[string]string{
		"":          "",
		"YQ==":      "a",
		"YWJj":      "abc",
		"YWJj=":     "abc",
		"YWJj==":    "abc",
		"YWJjZA==":  "abcd",
		"YQ":        "!Incorrect padding",
		"YQ=":       "!Incorrect padding",
		"YWJjZA=":   "!Incorrect padding",
		"YQ===":     "!Excess data after padding",
		"YQ==\n":    "!Excess data after padding",
		"YQ==YQ==":  "!Excess data after padding",
		"=YQ=":      "!Leading padding not allowed",
		"==":        "!Leading padding not allowed",
		"YW=j":      "!Discontinuous padding not allowed",
		"YQ=a=":     "!Discontinuous padding not allowed",
		"a b":       "!Only base64 data is allowed",
		"YQ=\n":     "!Only base64 data is allowed",
		"Y":         "!Invalid base64-encoded string: number of data characters (1) cannot be 1 more than a multiple of 4",
		"Y===":      "!Invalid base64-encoded string: number of data characters (1) cannot be 1 more than a multiple of 4",
		"YWJjZGVmZ": "!Invalid base64-encoded string: number of data characters (9) cannot be 1 more than a multiple of 4",
		"é":         "!string argument should contain only ASCII characters",
	}
	for in, want := range cases {
		got, err := pyB64Decode(in)
		if strings.HasPrefix(want, "!") {
			if err == nil || err.Error() != want[1:] {
				t.Errorf("%q: got %q, %v; want error %q", in, got, err, want[1:])
			}
		} else if err != nil || string(got) != want {
			t.Errorf("%q: got %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestRequestFieldsAreCheckedWithThePythonGuestsMessages(t *testing.T) {
	cases := map[string]string{
		`{"command": ""}`:                                       "run_tests needs a non-empty string 'command' without NUL",
		`{"command": "true", "timeout": 0}`:                     "'timeout' must be positive",
		`{"command": "true", "restore": ["a", ""]}`:             "'restore' must be a list of non-empty strings",
		`{"command": "true", "restore": "a"}`:                   "'restore' must be a list of non-empty strings",
		`{"command": "true", "files": ["a"]}`:                   "'files' must be an object of path -> base64 content",
		`{"command": "true", "files": {"it's": 1}}`:             `'files': "it's" must map to base64 text`,
		`{"command": "true", "files": {"a": "Y"}}`:              "'files': 'a' is not base64: Invalid base64-encoded string: number of data characters (1) cannot be 1 more than a multiple of 4",
		`{"command": "true", "reward_file": 1}`:                 "'reward_file' must be a string or null",
		`{"command": "true", "reward_file": "r.txt"}`:           "'reward_file' must be an absolute path",
		`{"command": "true", "reward_file": "/logs/../r"}`:      "path '/logs/../r' must name something below its root, without '..'",
		`{"command": "true", "reward_file": "/logs/r.txt"}`:     "'reward_file' '/logs/r.txt' must lie in a directory of its own, e.g. /logs/verifier",
		`{"command": "true", "reward_file": "/etc/x/r.txt"}`:    "'reward_file' '/etc/x/r.txt' must lie in a directory of its own, e.g. /logs/verifier",
		`{"command": "true", "reward_file": "/work/space/r"}`:   "'reward_file' must not lie in the workdir, nor its directory hold the workdir",
		`{"command": "true", "reward_file": "/work/space/a/r"}`: "'reward_file' must not lie in the workdir, nor its directory hold the workdir",
		`{"command": "true", "reward_file": "/work/r.txt"}`:     "'reward_file' '/work/r.txt' must lie in a directory of its own, e.g. /logs/verifier",
	}
	for in, want := range cases {
		req, err := decodeJSON([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		_, err = testsFields(req.(*jobj), "/work/space/")
		if err == nil || err.Error() != want {
			t.Errorf("%s: got %v, want %q", in, err, want)
		}
	}
	req, _ := decodeJSON([]byte(`{"command": "x", "restore": [], "files": {}, "reward_file": "", "timeout": 2}`))
	r, err := testsFields(req.(*jobj), "/w")
	if err != nil || r.rewardFile != "" || r.restore != nil || r.files != nil || r.timeout != 2 || r.cap != DefaultCap {
		t.Fatalf("%+v %v", r, err)
	}
}

// sandboxDirs points grading at a temporary tree: workdir, base, grading dir, /tests.
func sandboxDirs(t *testing.T) (workdir string) {
	root := t.TempDir()
	saved := [3]string{baseDir, gradingDir, hiddenRoot}
	baseDir, gradingDir, hiddenRoot = root+"/base", root+"/grading", root+"/tests"
	t.Cleanup(func() { baseDir, gradingDir, hiddenRoot = saved[0], saved[1], saved[2] })
	workdir = root + "/work"
	for _, d := range []string{workdir, baseDir + "/tests", baseDir + "/pkg"} {
		must(t, os.MkdirAll(d, 0o755))
	}
	must(t, os.WriteFile(baseDir+"/tests/test_a.py", []byte("def test_a(): pass\n"), 0o640))
	must(t, os.WriteFile(baseDir+"/pkg/conftest.py", []byte("# base\n"), 0o644))
	must(t, os.Symlink("test_a.py", baseDir+"/tests/link.py"))
	must(t, os.MkdirAll(baseDir+"/calc-1.0.dist-info", 0o755))
	must(t, os.WriteFile(baseDir+"/calc-1.0.dist-info/METADATA", []byte("Name: calc\n"), 0o644))
	return workdir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestTheStageIsSetWhateverTheAgentLeft(t *testing.T) {
	w := sandboxDirs(t)
	// the agent's doing: visible tests gone, a locked directory, a symlink where the hidden
	// file goes, configuration and shadowing names at every depth, stale bytecode
	must(t, os.MkdirAll(w+"/tests/locked/deep", 0o755))
	must(t, os.WriteFile(w+"/tests/locked/deep/x", nil, 0o644))
	must(t, os.Chmod(w+"/tests/locked", 0))
	must(t, os.MkdirAll(w+"/sub/deeper", 0o755))
	for _, p := range []string{"conftest.py", "sub/deeper/conftest.py", "sub/setup.cfg", "pytest.py", "sandbox_results.py",
		"pkg/conftest.py", "sub/pytest.py", ".git/conftest.py"} {
		must(t, os.MkdirAll(filepath.Dir(w+"/"+p), 0o755))
		must(t, os.WriteFile(w+"/"+p, []byte("evil\n"), 0o644))
	}
	must(t, os.MkdirAll(w+"/_pytest", 0o755))
	must(t, os.MkdirAll(w+"/hidden/__pycache__", 0o755))
	must(t, os.Symlink("/etc/passwd", w+"/hidden/test_h.py"))
	must(t, os.Symlink(w+"/sub", w+"/elsewhere"))
	// distribution metadata where sys.path looks (pytest11 entry points), and elsewhere
	for _, p := range []string{"evil-1.0.dist-info/entry_points.txt", "Evil.EGG-INFO/entry_points.txt",
		"hidden/evil.dist-info/entry_points.txt", "sub/evil.dist-info/entry_points.txt",
		"calc-1.0.dist-info/entry_points.txt"} {
		must(t, os.MkdirAll(filepath.Dir(w+"/"+p), 0o755))
		must(t, os.WriteFile(w+"/"+p, []byte("[pytest11]\nevil = evilmod\n"), 0o644))
	}
	must(t, os.WriteFile(w+"/evil.egg-link", []byte("/tmp\n"), 0o644))
	// bytecode at every depth, and __pycache__ as a file and as a symlink (not followed)
	for _, p := range []string{"__pycache__/conftest.cpython-311-pytest-7.2.1.pyc", "sub/deeper/__pycache__/m.pyc",
		".git/__pycache__/x.pyc", "outside/__pycache__/kept.pyc"} {
		must(t, os.MkdirAll(filepath.Dir(w+"/"+p), 0o755))
		must(t, os.WriteFile(w+"/"+p, []byte("pyc"), 0o644))
	}
	must(t, os.Rename(w+"/outside", filepath.Dir(w)+"/outside"))
	must(t, os.MkdirAll(w+"/linked", 0o755))
	must(t, os.Symlink(filepath.Dir(w)+"/outside/__pycache__", w+"/linked/__pycache__"))
	must(t, os.WriteFile(w+"/sub/__pycache__", nil, 0o644))

	r := testsRequest{restore: []string{"tests/"}, files: []hiddenFile{{"hidden/test_h.py", []byte("hidden\n")},
		{hiddenRoot + "/test.sh", []byte("#!/bin/sh\n")}}, rewardDir: filepath.Dir(gradingDir) + "/verifier"}
	must(t, os.MkdirAll(r.rewardDir, 0o755))
	must(t, os.WriteFile(r.rewardDir+"/reward.txt", []byte("1\n"), 0o444))
	results, home, plugin, err := prepare(w, r, nil)
	must(t, err)

	read := func(p string) string {
		data, err := os.ReadFile(p)
		if err != nil {
			return "<" + err.Error() + ">"
		}
		return string(data)
	}
	want := map[string]string{
		"tests/test_a.py":                     "def test_a(): pass\n",
		"pkg/conftest.py":                     "# base\n",
		"hidden/test_h.py":                    "hidden\n",
		".git/conftest.py":                    "evil\n", // .git is not searched
		"conftest.py":                         "<",
		"sub/deeper/conftest.py":              "<",
		"sub/setup.cfg":                       "<",
		"pytest.py":                           "<",
		"sandbox_results.py":                  "<",
		"sub/pytest.py":                       "evil\n", // shadows only at the top
		"tests/locked":                        "<",
		"sub/evil.dist-info/entry_points.txt": "[pytest11]", // not on sys.path
		"calc-1.0.dist-info/METADATA":         "Name: calc\n",
		"calc-1.0.dist-info/entry_points.txt": "<",
		"../outside/__pycache__/kept.pyc":     "pyc",
	}
	for p, content := range want {
		if got := read(w + "/" + p); !strings.HasPrefix(got, content) {
			t.Errorf("%s: %q, want %q", p, got, content)
		}
	}
	for _, gone := range []string{w + "/_pytest", w + "/hidden/__pycache__", r.rewardDir + "/reward.txt",
		w + "/evil-1.0.dist-info", w + "/Evil.EGG-INFO", w + "/evil.egg-link", w + "/hidden/evil.dist-info",
		w + "/__pycache__", w + "/sub/deeper/__pycache__", w + "/.git/__pycache__", w + "/linked/__pycache__",
		w + "/sub/__pycache__"} {
		if _, err := os.Lstat(gone); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	if link, err := os.Readlink(w + "/tests/link.py"); err != nil || link != "test_a.py" {
		t.Errorf("symlink copied as %q, %v", link, err)
	}
	if st, _ := os.Stat(w + "/tests/test_a.py"); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v", st.Mode())
	}
	if st, _ := os.Lstat(w + "/hidden/test_h.py"); !st.Mode().IsRegular() || st.Mode().Perm()&0o022 != 0 {
		t.Errorf("hidden file %v", st.Mode())
	}
	if got := read(hiddenRoot + "/test.sh"); got != "#!/bin/sh\n" {
		t.Errorf("absolute hidden file: %q", got)
	}
	if read(plugin+"/"+pluginFile) != string(pytestPlugin) || !strings.Contains(string(pytestPlugin), "SANDBOX_REPORTS_FD") {
		t.Errorf("plugin not written")
	}
	for dir, mode := range map[string]os.FileMode{results: 0o700, home: 0o700, plugin: 0o755, r.rewardDir: 0o755} {
		if st, err := os.Lstat(dir); err != nil || !st.IsDir() || st.Mode().Perm() != mode {
			t.Errorf("%s: %v %v", dir, st, err)
		}
	}
	if names, _ := dirNames(r.rewardDir); len(names) != 0 {
		t.Errorf("reward dir not emptied: %v", names)
	}
}

func TestHiddenPathsOutsideTheirRootAreRefused(t *testing.T) {
	w := sandboxDirs(t)
	for path, want := range map[string]string{
		"/etc/x":            "hidden file '/etc/x': absolute paths must lie under " + hiddenRoot + "/",
		"a/../../x":         "path 'a/../../x' must name something below its root, without '..'",
		hiddenRoot + "/../": "path '" + hiddenRoot + "/../' must name something below its root, without '..'",
	} {
		_, _, _, err := prepare(w, testsRequest{files: []hiddenFile{{path, nil}}}, nil)
		if err == nil || err.Error() != want {
			t.Errorf("%s: %v", path, err)
		}
	}
	_, _, _, err := prepare(w, testsRequest{restore: []string{"."}}, nil)
	if err == nil || err.Error() != "path '.' must name something below its root, without '..'" {
		t.Errorf("%v", err)
	}
}

func TestResultsAreReadWithoutFollowingSymlinksWithinTheirCaps(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(dir+"/b.xml", []byte("<b/>"), 0o644))
	must(t, os.WriteFile(dir+"/a.xml", []byte(strings.Repeat("x", maxResultsBytes-2)+"\xff"), 0o644))
	must(t, os.WriteFile(dir+"/c.xml", []byte("<c/>"), 0o644))
	must(t, os.WriteFile(dir+"/notes.txt", []byte("no"), 0o644))
	must(t, os.Symlink(dir+"/b.xml", dir+"/0-link.xml"))
	must(t, syscall.Mkfifo(dir+"/0-fifo.xml", 0o644))
	got := junitReports(dir)
	// a.xml's invalid byte becomes U+FFFD (3 bytes): the budget is spent before b.xml
	if len(got) != 1 || len(got[0]) != maxResultsBytes+1 || !strings.HasSuffix(got[0], "\uFFFD") {
		t.Fatalf("%d reports", len(got))
	}
	for _, p := range []string{dir + "/0-link.xml", dir + "/0-fifo.xml", dir + "/missing"} {
		if _, ok, err := readCapped(p, 10); ok || err != nil {
			t.Errorf("%s read: %v", p, err)
		}
	}
	if text, ok, _ := readCapped(dir+"/c.xml", 2); !ok || text != "<c" {
		t.Errorf("%q", text)
	}
	if _, _, err := readCapped("a\x00b", 2); err == nil || err.Error() != "ValueError: embedded null byte" {
		t.Errorf("%v", err)
	}
	if got := junitReports(dir + "/missing"); got == nil || len(got) != 0 {
		t.Errorf("%v", got)
	}
}

func TestTheReportPipeKeepsTheFirstBytesAndDrainsTheRest(t *testing.T) {
	p, err := newReportPipe()
	must(t, err)
	go func() {
		chunk := []byte(strings.Repeat("r", 1000) + "\n")
		for i := 0; i < 3000; i++ { // 3 MB: more than the pipe holds, more than kept
			p.w.Write(chunk)
		}
		p.closeWriteEnd()
	}()
	if text := p.collect(); len(text) != maxResultsBytes {
		t.Fatalf("%d bytes", len(text))
	}
}
