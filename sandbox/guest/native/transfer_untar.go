// The `untar` helper mode (transfer_modes.go): a tar stream from stdin into the working
// directory, as `tar -x -f - --no-overwrite-dir --no-same-owner` does it, in GNU tar's words.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

type untar struct {
	umask    int
	root     bool
	dirs     []*tar.Header // made here: their mode and time are set last, deepest first
	failed   bool
	stripped bool
}

// countingReader counts what the archive reader took: no byte at all is no archive at all.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func untarMain() int {
	x := &untar{umask: syscall.Umask(0), root: os.Geteuid() == 0}
	syscall.Umask(x.umask)
	in := bufio.NewReaderSize(os.Stdin, 1<<16)
	stream, err := decompress(in)
	if err != nil {
		say("tar: This does not look like a tar archive (" + err.Error() + ")")
		return x.fatal()
	}
	counted := &countingReader{r: stream}
	tr := tar.NewReader(counted)
	for members := 0; ; members++ {
		hdr, err := tr.Next()
		if err == io.EOF && counted.n > 0 {
			break
		}
		if err != nil {
			if err == io.ErrUnexpectedEOF && members > 0 {
				say("tar: Unexpected EOF in archive")
			} else {
				say("tar: This does not look like a tar archive")
			}
			return x.fatal()
		}
		if err := x.extract(hdr, tr); err != nil {
			say("tar: Unexpected EOF in archive")
			return x.fatal()
		}
	}
	x.finishDirs()
	if x.failed {
		say("tar: Exiting with failure status due to previous errors")
		return 2
	}
	return 0
}

func (x *untar) fatal() int {
	x.finishDirs()
	say("tar: Error is not recoverable: exiting now")
	return 2
}

// decompress recognises what tar recognises by its first bytes and the standard library reads.
func decompress(in *bufio.Reader) (io.Reader, error) {
	magic, _ := in.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(in)
	case bytes.HasPrefix(magic, []byte("BZh")):
		return bzip2.NewReader(in), nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
		return nil, errors.New("xz: GNU tar, which the image lacks, would read it")
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return nil, errors.New("zstd: GNU tar, which the image lacks, would read it")
	}
	return in, nil
}

func (x *untar) fail(name, what string, err error) {
	say("tar: " + name + ": " + what + ": " + why(err))
	x.failed = true
}

// memberName is the path a member is written to: leading slashes removed (said once, as GNU
// tar does), "" for the directory itself; ok false for a name with "..", which is skipped.
func (x *untar) memberName(name string) (string, bool) {
	if strings.HasPrefix(name, "/") && !x.stripped {
		say("tar: Removing leading `/' from member names")
		x.stripped = true
	}
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", false
		default:
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/"), true
}

func (x *untar) perm(mode int64) os.FileMode {
	perm := uint32(mode) & 0o7777
	if !x.root { // GNU tar's --no-same-permissions, the default for users
		perm &^= uint32(x.umask)
	}
	m := os.FileMode(perm & 0o777)
	if perm&syscall.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if perm&syscall.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if perm&syscall.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// clear removes what stands where a member goes (tar unlinks before it extracts); a directory
// stays, and then only a directory may go there.
func clearPath(name string) (isDir bool) {
	st, err := os.Lstat(name)
	if err != nil {
		return false
	}
	if st.IsDir() {
		return true
	}
	os.Remove(name)
	return false
}

// extract writes one member; an error is the archive's (a read that failed).
func (x *untar) extract(hdr *tar.Header, tr io.Reader) error {
	name, ok := x.memberName(hdr.Name)
	if !ok {
		say("tar: " + hdr.Name + ": Member name contains '..'")
		x.failed = true
		return nil
	}
	if name == "" {
		return nil // the directory itself, which exists and keeps its owner and mode
	}
	if dir := filepath.Dir(name); dir != "." {
		if err := os.MkdirAll(dir, 0o777); err != nil {
			x.fail(name, "Cannot mkdir", err)
			return nil
		}
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if clearPath(name) {
			return nil // --no-overwrite-dir: an existing directory is left as it is
		}
		if err := os.Mkdir(name, 0o700); err != nil {
			x.fail(name, "Cannot mkdir", err)
			return nil
		}
		x.dirs = append(x.dirs, &tar.Header{Name: name, Mode: hdr.Mode, ModTime: hdr.ModTime})
	case tar.TypeSymlink:
		if clearPath(name) {
			x.fail(name, "Cannot create symlink to '"+hdr.Linkname+"'", syscall.EEXIST)
		} else if err := os.Symlink(hdr.Linkname, name); err != nil {
			x.fail(name, "Cannot create symlink to '"+hdr.Linkname+"'", err)
		}
	case tar.TypeLink:
		target, ok := x.memberName(hdr.Linkname)
		if !ok || target == "" {
			say("tar: " + name + ": Cannot hard link to '" + hdr.Linkname + "': Invalid argument")
			x.failed = true
		} else if clearPath(name) {
			x.fail(name, "Cannot hard link to '"+target+"'", syscall.EEXIST)
		} else if err := os.Link(target, name); err != nil {
			x.fail(name, "Cannot hard link to '"+target+"'", err)
		}
	case tar.TypeFifo, tar.TypeChar, tar.TypeBlock:
		kind := map[byte]uint32{tar.TypeFifo: syscall.S_IFIFO, tar.TypeChar: syscall.S_IFCHR, tar.TypeBlock: syscall.S_IFBLK}[hdr.Typeflag]
		dev := int((hdr.Devmajor&0xfff)<<8 | hdr.Devminor&0xff | (hdr.Devminor&^0xff)<<12)
		if clearPath(name) {
			x.fail(name, "Cannot mknod", syscall.EEXIST)
		} else if err := syscall.Mknod(name, kind|uint32(x.perm(hdr.Mode).Perm()), dev); err != nil {
			x.fail(name, "Cannot mknod", err)
		}
	case tar.TypeXGlobalHeader:
	default: // regular files, and types tar extracts as such
		return x.file(name, hdr, tr)
	}
	return nil
}

func (x *untar) file(name string, hdr *tar.Header, tr io.Reader) error {
	if clearPath(name) {
		x.fail(name, "Cannot open", syscall.EISDIR)
		return nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		x.fail(name, "Cannot open", err)
		return nil
	}
	buf := make([]byte, chunkSize)
	writing := true
	for {
		n, rerr := tr.Read(buf)
		if n > 0 && writing {
			if _, err := f.Write(buf[:n]); err != nil {
				x.fail(name, "Cannot write", err)
				writing = false
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			f.Close()
			return rerr
		}
	}
	if err := f.Close(); err != nil && writing {
		x.fail(name, "Cannot close", err)
	}
	if err := os.Chmod(name, x.perm(hdr.Mode)); err != nil {
		x.fail(name, "Cannot change mode to "+strconv.FormatInt(hdr.Mode&0o7777, 8), err)
	}
	os.Chtimes(name, hdr.ModTime, hdr.ModTime)
	return nil
}

// finishDirs gives the directories made here their mode and time, deepest first (a
// read-only directory would have kept its members out).
func (x *untar) finishDirs() {
	sort.SliceStable(x.dirs, func(i, j int) bool { return x.dirs[i].Name > x.dirs[j].Name })
	for _, d := range x.dirs {
		if err := os.Chmod(d.Name, x.perm(d.Mode)); err != nil {
			x.fail(d.Name, "Cannot change mode to "+strconv.FormatInt(d.Mode&0o7777, 8), err)
		}
		os.Chtimes(d.Name, d.ModTime, d.ModTime)
	}
	x.dirs = nil
}
