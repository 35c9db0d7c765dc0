package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// write makes each file (parents included) under root with its content.
func write(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		must(t, os.MkdirAll(filepath.Dir(root+"/"+p), 0o755))
		must(t, os.WriteFile(root+"/"+p, []byte(content), 0o644))
	}
}

func TestTheSearchForConfigurationFailsClosedAtItsLimit(t *testing.T) {
	w := sandboxDirs(t)
	// Every entry counts, hard links to one empty file as the agent would make them cheaply:
	// a0..a3 are walked before tests/, where the conftest.py that would mark passes waits.
	write(t, w, map[string]string{"tests/conftest.py": "evil\n"})
	left := maxWalk - 6 // the workdir's a0..a3 and tests/, and tests/conftest.py
	for d := 0; d < 4; d++ {
		dir := w + "/a" + strconv.Itoa(d)
		must(t, os.Mkdir(dir, 0o755))
		must(t, os.WriteFile(dir+"/0", nil, 0o644)) // a file has at most 65,000 links (ext4)
		n := left / (4 - d)
		for i := 1; i < n; i++ {
			must(t, os.Link(dir+"/0", dir+"/"+strconv.Itoa(i)))
		}
		left -= n
	}
	// at the limit: searched to the end, the conftest.py removed (the base has none)
	if _, _, _, err := prepare(w, testsRequest{}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(w + "/tests/conftest.py"); err == nil {
		t.Fatal("conftest.py at the limit not removed")
	}
	// one entry past it: no stage, and an error that is the sandbox's (setup_failed), not ours
	write(t, w, map[string]string{"tests/conftest.py": "evil\n"})
	must(t, os.Link(w+"/a0/0", w+"/a0/one-more"))
	_, _, _, err := prepare(w, testsRequest{}, nil)
	var bad badRequest
	var internal internalError
	if err != errTooManyEntries || errors.As(err, &bad) || errors.As(err, &internal) {
		t.Fatalf("%v", err)
	}
	if want := "more than 200000 files and directories"; !strings.Contains(pyOSErrorText(err), want) {
		t.Errorf("%q", pyOSErrorText(err))
	}
}

func TestWhatPythonWouldImportInsteadOfAStagedModuleIsRemoved(t *testing.T) {
	w := sandboxDirs(t)
	write(t, baseDir, map[string]string{"conftest.py": "# base\n", "lib/mod.py": "# base\n",
		"pkg/conftest.abi3.so": "base's own\n"})
	write(t, w, map[string]string{
		// found before a restored conftest.py: a package, extension modules, bytecode
		"conftest/__init__.py": "__file__ = 'conftest.py'\n", "conftest.cpython-311-x86_64-linux-gnu.so": "elf",
		"conftest.abi3.so": "elf", "conftest.so": "elf", "conftest.pyc": "pyc", "conftest.pyd": "dll",
		"pkg/conftest.cpython-39-x86_64-linux-gnu.so": "elf", "pkg/conftest.abi3.so": "agent's",
		// before a hidden test module, and a restored .py
		"hidden/test_h/__init__.py": "def test_h(): pass\n", "hidden/test_h.so": "elf",
		"lib/mod/__init__.py": "evil\n",
		// other names, kept
		"conftest_helpers.py": "x\n", "conftestx.so": "elf", "conftest.txt": "notes\n", "hidden/test_h.json": "{}\n",
		"hidden/test_hh.so": "elf", "pkg/mod.so": "elf",
	})
	outside := t.TempDir()
	write(t, outside, map[string]string{"__init__.py": "kept\n"})
	must(t, os.Symlink(outside, w+"/pkg/conftest")) // removed, not followed
	r := testsRequest{restore: []string{"lib/mod.py"}, files: []hiddenFile{{"hidden/test_h.py", []byte("hidden\n")}}}
	_, _, _, err := prepare(w, r, nil)
	must(t, err)
	for _, gone := range []string{"conftest", "conftest.cpython-311-x86_64-linux-gnu.so", "conftest.abi3.so",
		"conftest.so", "conftest.pyc", "conftest.pyd", "pkg/conftest", "pkg/conftest.cpython-39-x86_64-linux-gnu.so",
		"hidden/test_h", "hidden/test_h.so", "lib/mod"} {
		if _, err := os.Lstat(w + "/" + gone); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	for p, want := range map[string]string{"conftest.py": "# base\n", "pkg/conftest.py": "# base\n",
		"pkg/conftest.abi3.so": "base's own\n", "lib/mod.py": "# base\n", "hidden/test_h.py": "hidden\n",
		"conftest_helpers.py": "x\n", "conftestx.so": "elf", "conftest.txt": "notes\n", "hidden/test_h.json": "{}\n",
		"hidden/test_hh.so": "elf", "pkg/mod.so": "elf"} {
		if data, err := os.ReadFile(w + "/" + p); err != nil || string(data) != want {
			t.Errorf("%s: %q %v, want %q", p, data, err, want)
		}
	}
	if data, err := os.ReadFile(outside + "/__init__.py"); err != nil || string(data) != "kept\n" {
		t.Errorf("followed the symlink: %q %v", data, err)
	}
}

func TestHiddenTestsArePackagedAsTheBaseAndTheHiddenFilesSay(t *testing.T) {
	w := sandboxDirs(t)
	write(t, baseDir, map[string]string{"tests/__init__.py": "", "deep/README": "base\n"})
	write(t, w, map[string]string{
		"__init__.py":        "evil\n", // above tests/, a package in the base: removed
		"hidden/__init__.py": "evil\n", // the hidden test's own directory: not a package in the base
		"hidden/sub/x.py":    "kept\n",
		"tests/__init__.py":  "edited\n", // the base's: the project's code, kept as the agent left it
		"tests/__init__.cpython-311-x86_64-linux-gnu.so": "elf", // found before it
		"deep/__init__.py":     "evil\n", // above the agent's own package below
		"deep/pkg/__init__.py": "the agent's package\n",
	})
	r := testsRequest{files: []hiddenFile{{"hidden/test_h.py", []byte("h\n")}, {"tests/test_new.py", []byte("n\n")},
		{"deep/pkg/tests/__init__.py", nil}, {"deep/pkg/tests/test_p.py", []byte("p\n")}}}
	_, _, _, err := prepare(w, r, nil)
	must(t, err)
	for _, gone := range []string{"__init__.py", "hidden/__init__.py", "tests/__init__.cpython-311-x86_64-linux-gnu.so",
		"deep/__init__.py"} {
		if _, err := os.Lstat(w + "/" + gone); err == nil {
			t.Errorf("%s is still there", gone)
		}
	}
	for p, want := range map[string]string{"tests/__init__.py": "edited\n", "deep/pkg/__init__.py": "the agent's package\n",
		"hidden/sub/x.py": "kept\n", "deep/pkg/tests/test_p.py": "p\n", "tests/test_new.py": "n\n"} {
		if data, err := os.ReadFile(w + "/" + p); err != nil || string(data) != want {
			t.Errorf("%s: %q %v, want %q", p, data, err, want)
		}
	}
}
