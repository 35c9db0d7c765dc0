// run_tests' stage (tests.go): what is put back to the base, the hidden files, the fresh
// directories. As root, with no process of the user alive; symlinks are never followed.
package main

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// errNUL is the protocol's answer for a path with a NUL (a reward_file can have one: the
// protocol does not forbid it), in the words it has always used.
const errNUL = internalError("ValueError: embedded null byte")

// prepare sets the stage: steps 2-4 of tests.go (what it looks for: tests_config.go and
// tests_shadow.go). It returns the results directory, HOME and the plugin's directory. A badRequest (a path of the request refused on its turn) or internalError stops it like an OS error, partway.
func prepare(workdir string, r testsRequest, owner *[2]int) (results, home, plugin string, err error) {
	for _, rel := range r.restore {
		parts, err := pathParts(rel)
		if err != nil {
			return "", "", "", err
		}
		if err := restorePath(workdir, parts, owner); err != nil {
			return "", "", "", err
		}
	}
	configs, err := restoreConfiguration(workdir, sysPathDirs(r.files), owner)
	if err != nil {
		return "", "", "", err
	}
	// Before the hidden files are written: they may need a directory a shadow's name has.
	if err := removeShadows(workdir, r, configs, owner); err != nil {
		return "", "", "", err
	}
	for _, f := range r.files {
		if strings.HasPrefix(f.path, "/") {
			if err := removePath(hiddenRoot); err != nil {
				return "", "", "", err
			}
			break
		}
	}
	for _, f := range r.files {
		if err := writeHidden(workdir, f); err != nil {
			return "", "", "", err
		}
	}
	// Bytecode the agent planted, stamped with the mtime and size a restored file gets back
	// from the base, would be run instead of that file's source.
	if err := removeBytecodeCaches(workdir); err != nil {
		return "", "", "", err
	}
	if r.rewardDir != "" {
		parts, _ := pathParts(r.rewardDir)
		parent, err := realDirs("/", parts[:len(parts)-1])
		if err != nil {
			return "", "", "", err
		}
		target := pathJoin(parent, parts[len(parts)-1])
		if err := removePath(target); err != nil {
			return "", "", "", err
		}
		if err := freshDir(target, 0o755, owner); err != nil {
			return "", "", "", err
		}
	}
	if err := removePath(gradingDir); err != nil {
		return "", "", "", err
	}
	results, home, plugin = gradingDir+"/results", gradingDir+"/home", gradingDir+"/plugin"
	for _, d := range []struct {
		path  string
		mode  os.FileMode
		owner *[2]int
	}{{gradingDir, 0o755, nil}, {results, 0o700, owner}, {home, 0o700, owner}, {plugin, 0o755, nil}} {
		if err := freshDir(d.path, d.mode, d.owner); err != nil {
			return "", "", "", err
		}
	}
	// root's, read-only to the user: the plugin the command loads cannot be the agent's
	if err := writeNew(plugin+"/"+pluginFile, pytestPlugin); err != nil {
		return "", "", "", err
	}
	return results, home, plugin, nil
}

// realDirs makes root/parts... real directories (a symlink or file in the way is removed)
// and returns the path.
func realDirs(root string, parts []string) (string, error) {
	current := root
	for _, part := range parts {
		current = pathJoin(current, part)
		if strings.ContainsRune(current, 0) {
			return "", errNUL
		}
		st, err := os.Lstat(current)
		if errnoOf(err) == syscall.ENOENT {
			if err := os.Mkdir(current, 0o755); err != nil {
				return "", err
			}
			continue
		}
		if err != nil {
			return "", err
		}
		if !st.IsDir() { // a symlink is not a directory for Lstat
			if err := removePath(current); err != nil {
				return "", err
			}
			if err := os.Mkdir(current, 0o755); err != nil {
				return "", err
			}
		}
	}
	return current, nil
}

// removePath removes whatever is at path, never following a symlink.
func removePath(path string) error {
	if strings.ContainsRune(path, 0) {
		return errNUL
	}
	st, err := os.Lstat(path)
	if errnoOf(err) == syscall.ENOENT {
		return nil
	}
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return os.Remove(path)
	}
	os.Chmod(path, 0o700) // the agent may have made it unreadable to stop the removal
	if os.RemoveAll(path) == nil {
		return nil
	}
	// open up every directory below that the agent locked, then once more
	filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if d != nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(path)
}

// restorePath puts workdir/parts back as the base has it: copied from baseDir, or removed.
func restorePath(workdir string, parts []string, owner *[2]int) error {
	parent, err := realDirs(workdir, parts[:len(parts)-1])
	if err != nil {
		return err
	}
	target := pathJoin(parent, parts[len(parts)-1])
	if err := removePath(target); err != nil {
		return err
	}
	source := pathJoin(baseDir, strings.Join(parts, "/"))
	st, err := os.Lstat(source)
	if err != nil {
		return nil // the base has none
	}
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		err = copySymlink(source, target)
	case st.IsDir():
		err = copyTree(source, target)
	default:
		err = copyFile(source, target)
	}
	if err != nil || owner == nil {
		return err
	}
	return chownTree(target, owner) // as the agent had it at the start (the base copy is root's)
}

func copySymlink(source, target string) error {
	link, err := os.Readlink(source)
	if err != nil {
		return err
	}
	return os.Symlink(link, target)
}

// copyFile is shutil.copy2 of a regular file: its bytes, mode and times.
func copyFile(source, target string) error {
	st, err := os.Lstat(source)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return &os.PathError{Op: "copy", Path: source, Err: syscall.EINVAL}
	}
	in, err := os.Open(source)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return copyStat(st, target)
}

// copyStat is shutil.copystat: permission bits (setuid, setgid, sticky included) and times.
func copyStat(st fs.FileInfo, target string) error {
	sys := st.Sys().(*syscall.Stat_t)
	if err := syscall.Chmod(target, sys.Mode&0o7777); err != nil {
		return &os.PathError{Op: "chmod", Path: target, Err: err}
	}
	return os.Chtimes(target, time.Unix(int64(sys.Atim.Sec), int64(sys.Atim.Nsec)), st.ModTime())
}

// copyTree is shutil.copytree(symlinks=True): directories made, symlinks copied as symlinks,
// files as copyFile; every entry tried, the first error returned.
func copyTree(source, target string) error {
	st, err := os.Lstat(source)
	if err != nil {
		return err
	}
	if err := os.Mkdir(target, 0o777); err != nil {
		return err
	}
	entries, err := os.ReadDir(source)
	if err != nil {
		return err
	}
	var first error
	for _, e := range entries {
		from, to := source+"/"+e.Name(), target+"/"+e.Name()
		switch {
		case e.Type()&fs.ModeSymlink != 0:
			err = copySymlink(from, to)
		case e.IsDir():
			err = copyTree(from, to)
		default:
			err = copyFile(from, to)
		}
		if err != nil && first == nil {
			first = err
		}
	}
	if err := copyStat(st, target); err != nil && first == nil {
		first = err
	}
	return first
}

func chownTree(path string, owner *[2]int) error {
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, owner[0], owner[1])
	})
}

// writeHidden writes a hidden file, root-owned and read-only to everyone else; stale bytecode
// beside it is removed.
func writeHidden(workdir string, f hiddenFile) error {
	root := workdir
	if strings.HasPrefix(f.path, "/") {
		if !strings.HasPrefix(f.path, hiddenRoot+"/") {
			return badRequestf("hidden file %s: absolute paths must lie under %s/", pyStrRepr(f.path), hiddenRoot)
		}
		root = "/"
	}
	parts, err := pathParts(f.path)
	if err != nil {
		return err
	}
	parent, err := realDirs(root, parts[:len(parts)-1])
	if err != nil {
		return err
	}
	target := pathJoin(parent, parts[len(parts)-1])
	if err := removePath(target); err != nil {
		return err
	}
	if err := removePath(pathJoin(parent, "__pycache__")); err != nil {
		return err
	}
	return writeNew(target, f.content)
}

// writeNew creates a file that must not exist yet (no symlink followed), mode 0644 less the
// umask, as the guest.
func writeNew(path string, content []byte) error {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	if _, err := out.Write(content); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// freshDir makes a directory with exactly mode (not reduced by the umask), given to owner.
func freshDir(path string, mode os.FileMode, owner *[2]int) error {
	if err := os.Mkdir(path, mode); err != nil {
		return err
	}
	if err := os.Chmod(path, mode); err != nil {
		return err
	}
	if owner != nil {
		return os.Chown(path, owner[0], owner[1])
	}
	return nil
}
