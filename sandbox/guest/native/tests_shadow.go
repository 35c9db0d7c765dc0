// run_tests' stage (tests_stage.go): what Python would import instead of the files the stage
// put in place, and the packages the hidden tests are imported as.
//
// pytest imports a conftest.py or a test module by its name, with its directory first on
// sys.path, then only compares the module's __file__ with the path it expected. In one
// directory, Python's import system finds a package directory NAME/ and an extension module
// (NAME.cpython-311-x86_64-linux-gnu.so, NAME.abi3.so, NAME.so) before NAME.py, and a package's
// __init__.py can set __file__ to anything: the agent's code would be loaded in place of the
// restored conftest.py or the hidden test. And a hidden test in a directory with an __init__.py
// is imported as part of a package (pytest's rootdir rules), whose __init__.py files run first.
package main

import (
	"os"
	"strings"
)

// removeShadows puts back to the base every entry that Python would import instead of a module
// the stage put in place: the configuration files restored from the base, the restore paths
// naming a .py file, the hidden files and their packages' __init__.py files. And an __init__.py
// that would make a hidden test's directory, or the package holding it, a package of the
// agent's is removed (packageInits). To run before the hidden files are written.
func removeShadows(workdir string, r testsRequest, configs [][]string, owner *[2]int) error {
	modules, err := packageInits(workdir, r.files, owner)
	if err != nil {
		return err
	}
	for _, f := range r.files {
		if parts, err := pathParts(f.path); err == nil && !strings.HasPrefix(f.path, "/") {
			modules = append(modules, parts) // /tests, where the others go, is emptied first
		}
	}
	for _, rel := range r.restore {
		if parts, err := pathParts(rel); err == nil && inBase(parts, false) {
			modules = append(modules, parts)
		}
	}
	modules = append(modules, configs...)
	// per directory, the module names to keep unshadowed
	byDir := map[string]map[string]bool{}
	dirs := map[string][]string{}
	for _, parts := range modules {
		name := parts[len(parts)-1]
		if !strings.HasSuffix(name, ".py") || name == ".py" {
			continue
		}
		key := strings.Join(parts[:len(parts)-1], "/")
		if byDir[key] == nil {
			byDir[key], dirs[key] = map[string]bool{}, parts[:len(parts)-1]
		}
		byDir[key][strings.TrimSuffix(name, ".py")] = true
	}
	for key, names := range byDir {
		entries, err := realDirNames(workdir, dirs[key])
		if err != nil {
			continue // not a real directory (yet): nothing in it; the stage makes it anew
		}
		for _, entry := range entries {
			if shadowsModule(entry, names) {
				parts := append(append([]string{}, dirs[key]...), entry)
				if err := restorePath(workdir, parts, owner); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// shadowsModule: whether Python's import system could load the entry (a name in a directory)
// for one of these module names instead of NAME.py beside it: a directory (or anything) named
// NAME, an extension module NAME.<tag>.so or NAME.so (NAME.pyd), stray bytecode NAME.pyc.
func shadowsModule(entry string, names map[string]bool) bool {
	if names[entry] {
		return true
	}
	dot := strings.IndexByte(entry, '.')
	if dot <= 0 || !names[entry[:dot]] {
		return false
	}
	suffix := entry[dot:]
	return strings.HasSuffix(suffix, ".so") || strings.HasSuffix(suffix, ".pyd") || suffix == ".pyc"
}

// packageInits settles the packages the hidden .py files are imported in. pytest walks up
// from a test's directory while there is an __init__.py and imports every one it passes: from
// the hidden file's directory up, an __init__.py the base or the hidden files have is kept (its
// content is the project's code, which the tests import anyway) and the walk goes on; the first
// one neither has is removed, and the walk ends there, where pytest's will. Except in a
// directory above the hidden file's own that the base lacks: a package the agent made for its
// code, holding the hidden tests' package, is the code under test. It returns the __init__.py
// files kept, whose names must not be shadowed either.
func packageInits(workdir string, files []hiddenFile, owner *[2]int) ([][]string, error) {
	hidden := map[string]bool{}
	var tests [][]string
	for _, f := range files {
		if parts, err := pathParts(f.path); err == nil && !strings.HasPrefix(f.path, "/") {
			hidden[strings.Join(parts, "/")] = true
			if strings.HasSuffix(f.path, ".py") {
				tests = append(tests, parts)
			}
		}
	}
	var kept [][]string
	done := map[string]bool{}
	for _, parts := range tests {
		for i := len(parts) - 1; i >= 0; i-- {
			init := append(append([]string{}, parts[:i]...), "__init__.py")
			key := strings.Join(init, "/")
			if done[key] {
				break // walked from here already
			}
			done[key] = true
			if hidden[key] || inBase(init, false) {
				kept = append(kept, init)
				continue
			}
			if i > 0 && i < len(parts)-1 && !inBase(parts[:i], true) && hasEntry(workdir, init) {
				continue // the agent's own package
			}
			if err := restorePath(workdir, init, owner); err != nil {
				return nil, err
			}
			break
		}
	}
	return kept, nil
}

// inBase: whether the base has parts (as a real directory, with dir).
func inBase(parts []string, dir bool) bool {
	st, err := os.Lstat(pathJoin(baseDir, strings.Join(parts, "/")))
	return err == nil && (!dir || st.IsDir())
}

// hasEntry: whether workdir/parts exists, every directory on the way a real one.
func hasEntry(workdir string, parts []string) bool {
	names, err := realDirNames(workdir, parts[:len(parts)-1])
	if err != nil {
		return false
	}
	for _, name := range names {
		if name == parts[len(parts)-1] {
			return true
		}
	}
	return false
}
