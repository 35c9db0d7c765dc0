// run_tests' stage (tests_stage.go): the search for test configuration, runner-shadowing
// names, distribution metadata and bytecode the agent left in the workdir.
package main

import (
	"errors"
	"io/fs"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// configNames: test configuration pytest (or Python) reads from wherever it sits in the tree.
var configNames = map[string]bool{
	"conftest.py": true, "pytest.ini": true, ".pytest.ini": true, "tox.ini": true, "setup.cfg": true,
	"pyproject.toml": true, "sitecustomize.py": true, "usercustomize.py": true,
}

// shadowNames: top-level names that `python -m pytest` (the workdir first on sys.path) would
// import instead of the real runner, or instead of our plugin (`-p sandbox_results`: the
// workdir comes before PYTHONPATH).
var shadowNames = map[string]bool{
	"pytest.py": true, "pytest": true, "_pytest": true, "pluggy": true, "pluggy.py": true, "py.py": true,
	"iniconfig": true, "sandbox_results.py": true, "sandbox_results": true,
}

// isMetadataName: installed-distribution metadata, as importlib.metadata finds it in any
// directory on sys.path (it compares lower-cased names), and as pkg_resources follows an
// .egg-link. pytest autoloads the `pytest11` entry points of every distribution found, so one
// written into the workdir would load a plugin of the agent's.
func isMetadataName(name string) bool {
	low := strings.ToLower(name)
	return strings.HasSuffix(low, ".dist-info") || strings.HasSuffix(low, ".egg-info") ||
		strings.HasSuffix(low, ".egg-link")
}

// maxWalk: directory entries (files and directories, outside .git) the configuration search
// looks at. Kept, though the search fails closed at it: it bounds the work and memory grading
// spends on a tree the agent can grow without end for next to nothing (a hard link is an entry),
// and real workspaces stay far below it (.git, most of a large repository, is left out).
const maxWalk = 200_000

// errTooManyEntries: the search met its limit, so a configuration file may lie beyond it,
// unrestored: the tests must not run. The agent made the tree: the stage's failure is the
// model's (setup_failed: a score of 0, reason tests_setup_failed, this text in output_tail).
var errTooManyEntries = errors.New("the workdir holds more than " + strconv.Itoa(maxWalk) +
	" files and directories (outside .git), past the limit of the search for test configuration" +
	" (conftest.py, pytest.ini, ...): the tests were not run")

// sysPathDirs: the directories of the workdir that will be on the test run's sys.path, as
// parts below it: the workdir itself (`python -m pytest` puts the current directory first)
// and every directory from a hidden file's up to the workdir (pytest's rootdir-based
// insertion of the first one without an __init__.py).
func sysPathDirs(files []hiddenFile) [][]string {
	dirs := [][]string{{}}
	seen := map[string]bool{"": true}
	for _, f := range files {
		if strings.HasPrefix(f.path, "/") {
			continue
		}
		parts, err := pathParts(f.path)
		if err != nil {
			continue // refused when it is written
		}
		for i := 1; i < len(parts); i++ {
			if key := strings.Join(parts[:i], "/"); !seen[key] {
				seen[key] = true
				dirs = append(dirs, parts[:i])
			}
		}
	}
	return dirs
}

// restoreConfiguration puts every configuration file in the tree, every runner-shadowing
// top-level name and all distribution metadata in the sys.path directories back as the base
// has it; and what the base has that the agent removed. It returns the configuration files
// it put back from the base (what is left of them: those the base has).
func restoreConfiguration(workdir string, pathDirs [][]string, owner *[2]int) ([][]string, error) {
	var found [][]string
	if names, err := dirNames(workdir); err == nil {
		for _, name := range names {
			if shadowNames[name] {
				found = append(found, []string{name})
			}
		}
	}
	for _, dir := range pathDirs {
		for _, root := range []string{workdir, baseDir} {
			names, err := realDirNames(root, dir)
			if err != nil {
				continue
			}
			for _, name := range names {
				if isMetadataName(name) {
					found = append(found, append(append([]string{}, dir...), name))
				}
			}
		}
	}
	seen := 0
	complete := walkTree(workdir, nil, true, func(prefix []string, dirs, names []string) bool {
		seen += len(dirs) + len(names)
		found = append(found, configFiles(prefix, names)...)
		return seen <= maxWalk
	})
	if !complete {
		return nil, errTooManyEntries
	}
	var configs [][]string
	walkTree(baseDir, nil, false, func(prefix []string, _, names []string) bool {
		files := configFiles(prefix, names)
		found = append(found, files...)
		configs = append(configs, files...)
		return true
	})
	// Each once, the deeper first: restoring pytest/conftest.py after pytest/ would make
	// pytest/ again (an empty directory) to hold it.
	unique := map[string]bool{}
	var todo [][]string
	for _, parts := range found {
		if key := strings.Join(parts, "/"); !unique[key] {
			unique[key] = true
			todo = append(todo, parts)
		}
	}
	sort.SliceStable(todo, func(i, j int) bool { return len(todo[i]) > len(todo[j]) })
	for _, parts := range todo {
		if err := restorePath(workdir, parts, owner); err != nil {
			return nil, err
		}
	}
	return configs, nil
}

func configFiles(prefix, names []string) [][]string {
	var out [][]string
	for _, name := range names {
		if configNames[name] {
			out = append(out, append(append([]string{}, prefix...), name))
		}
	}
	return out
}

// walkTree is os.walk, top down: visit gets each directory's subdirectories (a symlink to a
// directory is listed, never entered; .git left out with skipGit) and other names, and
// returns false to stop the walk. Unreadable directories are passed over.
func walkTree(dir string, prefix []string, skipGit bool, visit func(prefix, dirs, names []string) bool) bool {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return true
	}
	var dirs, names []string
	for _, e := range entries {
		isDir := e.IsDir()
		if e.Type()&fs.ModeSymlink != 0 {
			st, err := os.Stat(dir + "/" + e.Name())
			isDir = err == nil && st.IsDir()
		}
		switch {
		case isDir && e.Name() == ".git" && skipGit:
		case isDir:
			dirs = append(dirs, e.Name())
		default:
			names = append(names, e.Name())
		}
	}
	if !visit(prefix, dirs, names) {
		return false
	}
	for _, d := range dirs {
		path := dir + "/" + d
		if st, err := os.Lstat(path); err != nil || !st.IsDir() {
			continue // a symlink: not followed
		}
		if !walkTree(path, append(append([]string{}, prefix...), d), skipGit, visit) {
			return false
		}
	}
	return true
}

// realDirNames: the names in root/parts..., when every part is a real directory (a symlink
// on the way is not followed: the stage replaces it with a directory).
func realDirNames(root string, parts []string) ([]string, error) {
	dir := root
	for _, part := range parts {
		dir = pathJoin(dir, part)
		if st, err := os.Lstat(dir); err != nil || !st.IsDir() {
			return nil, syscall.ENOTDIR
		}
	}
	return dirNames(dir)
}

// removeBytecodeCaches removes every __pycache__ in the tree, whatever it is (a directory, a
// file, a symlink, never followed), .git's included. Not capped like the configuration search:
// one left would be loaded. Unreadable directories (only when not root) are passed over.
func removeBytecodeCaches(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		path := dir + "/" + e.Name()
		switch {
		case e.Name() == "__pycache__":
			if err := removePath(path); err != nil {
				return err
			}
		case e.IsDir(): // from the directory entry: a symlink is not a directory here
			if err := removeBytecodeCaches(path); err != nil {
				return err
			}
		}
	}
	return nil
}

func dirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
