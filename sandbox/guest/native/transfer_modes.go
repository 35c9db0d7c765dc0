// This binary in place of a program the image lacks, run as the user by upload's and
// download's helper scripts (transfer.go), so that the transfers work in any image:
//
//	sandbox-guest copy    cat as a writer: stdin to stdout ("cat: write error: ..." on failure)
//	sandbox-guest tar     `tar -c -f - .`: the working directory as a tar stream, members ./...
//	sandbox-guest untar   `tar -x -f - --no-overwrite-dir --no-same-owner` into the working
//	                      directory; gzip and bzip2 are recognised, as tar does
//
// Failures are told in GNU tar's (and cat's) words, the ones transfer.go reads the statuses
// from. They are dispatched from init, before main: they need none of the guest's
// set-up, and main.go stays as it is (its `cat` mode is read_file's reader).
package main

import (
	"archive/tar"
	"bufio"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func init() {
	if len(os.Args) != 2 {
		return
	}
	switch os.Args[1] {
	case "copy":
		os.Exit(copyMain())
	case "tar":
		os.Exit(tarMain())
	case "untar":
		os.Exit(untarMain())
	}
}

func say(line string) { os.Stderr.WriteString(line + "\n") }

// why is an error's strerror text, as C programs print it.
func why(err error) string {
	if en := errnoOf(err); en != 0 {
		return strerror(en)
	}
	return err.Error()
}

func copyMain() int {
	return pumpToStdout(0,
		func(err error) int { say("cat: -: " + strerror(err.(syscall.Errno))); return 1 },
		func(err error) int { say("cat: write error: " + strerror(err.(syscall.Errno))); return 1 })
}

// --- tar: a directory out ------------------------------------------------------------------

type tarOut struct {
	tw      *tar.Writer
	links   map[[2]uint64]string // dev, inode -> the first member's name (hard links)
	failed  bool                 // exit 2
	changed bool                 // exit 1: a file changed while read
}

func tarMain() int {
	out := bufio.NewWriterSize(os.Stdout, 1<<16)
	t := &tarOut{tw: tar.NewWriter(out), links: map[[2]uint64]string{}}
	err := t.add(".", "./")
	if err == nil {
		err = t.tw.Close()
	}
	if err == nil {
		err = out.Flush()
	}
	switch {
	case err != nil:
		say("tar: -: Cannot write: " + why(err))
		say("tar: Error is not recoverable: exiting now")
		return 2
	case t.failed:
		say("tar: Exiting with failure status due to previous errors")
		return 2
	case t.changed:
		return 1
	}
	return 0
}

// add writes the member path (named name) and, for a directory, what it holds; an error is a
// write error (fatal), the rest is said and remembered.
func (t *tarOut) add(path, name string) error {
	shown := strings.TrimSuffix(name, "/") // a directory's member name ends in "/", tar's messages do not
	fi, err := os.Lstat(path)
	if err != nil {
		say("tar: " + shown + ": Cannot stat: " + why(err))
		t.failed = true
		return nil
	}
	link := ""
	if fi.Mode()&os.ModeSymlink != 0 {
		if link, err = os.Readlink(path); err != nil {
			say("tar: " + shown + ": Cannot readlink: " + why(err))
			t.failed = true
			return nil
		}
	}
	if fi.Mode()&os.ModeSocket != 0 {
		say("tar: " + shown + ": socket ignored")
		return nil
	}
	hdr, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		say("tar: " + shown + ": " + err.Error())
		t.failed = true
		return nil
	}
	hdr.Name, hdr.AccessTime, hdr.ChangeTime = name, time.Time{}, time.Time{}
	switch {
	case fi.IsDir():
		return t.addDir(path, name, shown, hdr)
	case fi.Mode().IsRegular():
		return t.addFile(path, name, hdr, fi)
	}
	return t.tw.WriteHeader(hdr)
}

func (t *tarOut) addDir(path, name, shown string, hdr *tar.Header) error {
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		say("tar: " + shown + ": Cannot open: " + why(err))
		t.failed = true
		return nil
	}
	for _, e := range entries { // sorted by name: the same tree makes the same stream
		child := e.Name()
		if err := t.add(path+"/"+child, strings.TrimSuffix(name, "/")+"/"+child+dirSlash(e)); err != nil {
			return err
		}
	}
	return nil
}

func dirSlash(e os.DirEntry) string {
	if e.IsDir() {
		return "/"
	}
	return ""
}

func (t *tarOut) addFile(path, name string, hdr *tar.Header, fi os.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		key := [2]uint64{uint64(st.Dev), st.Ino}
		if first, seen := t.links[key]; seen {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			return t.tw.WriteHeader(hdr)
		}
		t.links[key] = name
	}
	f, err := os.Open(path)
	if err != nil {
		say("tar: " + name + ": Cannot open: " + why(err))
		t.failed = true
		return nil
	}
	defer f.Close()
	if err := t.tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.CopyN(t.tw, readSide{f}, hdr.Size)
	if n < hdr.Size {
		var rerr readError
		switch {
		case errors.As(err, &rerr):
			say("tar: " + name + ": Read error at byte " + strconv.FormatInt(n, 10) + ": " + why(rerr.err))
		case err != nil && err != io.EOF:
			return err // the archive's own write failed
		default:
			say("tar: " + name + ": File shrank by " + strconv.FormatInt(hdr.Size-n, 10) + " bytes; padding with zeros")
		}
		t.failed = true
		if _, err := io.CopyN(t.tw, zeros{}, hdr.Size-n); err != nil {
			return err
		}
		return nil
	}
	if err != nil {
		return err // the archive's own write failed
	}
	if st, err := f.Stat(); err == nil && st.Size() != hdr.Size {
		say("tar: " + name + ": file changed as we read it")
		t.changed = true
	}
	return nil
}

// readSide marks a file's read errors, so that io.CopyN's are told from the stream's own.
type readSide struct{ f *os.File }

type readError struct{ err error }

func (e readError) Error() string { return e.err.Error() }

func (r readSide) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && err != io.EOF {
		err = readError{err}
	}
	return n, err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0
	}
	return len(p), nil
}
