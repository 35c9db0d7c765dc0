// Who commands run as: --user, read from /etc/passwd and /etc/group on every request (an
// image's or a test's change to them counts at once, no cache to go stale); switched to in the
// child between fork and exec (SysProcAttr.Credential: uid, gid and groups), so neither
// setpriv nor a wrapper is needed.
package main

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
)

// Identity: switch false means "as the guest itself" (not root, or no --user).
type Identity struct {
	Name   string
	Home   string
	Switch bool
	UID    uint32
	GID    uint32
	Groups []uint32
}

// strayUID is the uid a sweep kills by: the user's, when it is not the guest's own.
func (id Identity) strayUID() (uint32, bool) {
	if id.Switch && id.UID != uint32(os.Getuid()) {
		return id.UID, true
	}
	return 0, false
}

var errNoSuchUser = errors.New("no such user")

// resolveIdentity: only root can switch users; otherwise commands run as the guest's own
// user (tests, `docker exec -u`).
func resolveIdentity(user string) (Identity, error) {
	if user != "" && os.Getuid() == 0 {
		pw, ok := lookupPasswd(func(p passwd) bool { return p.name == user })
		if !ok {
			return Identity{}, errNoSuchUser
		}
		return Identity{pw.name, pw.home, true, pw.uid, pw.gid, groupList(pw.name, pw.gid)}, nil
	}
	uid := uint32(os.Getuid())
	if pw, ok := lookupPasswd(func(p passwd) bool { return p.uid == uid }); ok {
		return Identity{Name: pw.name, Home: pw.home}, nil
	}
	name, home := os.Getenv("USER"), os.Getenv("HOME")
	if name == "" {
		name = "unknown"
	}
	if home == "" {
		home = "/"
	}
	return Identity{Name: name, Home: home}, nil
}

type passwd struct {
	name     string
	uid, gid uint32
	home     string
}

// lookupPasswd returns the first /etc/passwd entry that matches (getpwnam, getpwuid).
func lookupPasswd(match func(passwd) bool) (passwd, bool) {
	f, err := os.Open("/etc/passwd")
	if err != nil {
		return passwd{}, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 || fields[0] == "" || strings.HasPrefix(fields[0], "+") || strings.HasPrefix(fields[0], "-") {
			continue
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		p := passwd{fields[0], uint32(uid), uint32(gid), fields[5]}
		if p.home == "" {
			p.home = "/"
		}
		if match(p) {
			return p, true
		}
	}
	return passwd{}, false
}

// groupList is getgrouplist(name, gid): the primary group, then every group of
// /etc/group that lists name as a member.
func groupList(name string, gid uint32) []uint32 {
	groups := []uint32{gid}
	f, err := os.Open("/etc/group")
	if err != nil {
		return groups
	}
	defer f.Close()
	seen := map[uint32]bool{gid: true}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 || fields[3] == "" {
			continue
		}
		g, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil || seen[uint32(g)] {
			continue
		}
		for _, member := range strings.Split(fields[3], ",") {
			if strings.TrimSpace(member) == name {
				groups = append(groups, uint32(g))
				seen[uint32(g)] = true
				break
			}
		}
	}
	return groups
}
