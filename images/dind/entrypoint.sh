#!/bin/sh
# Entrypoint of the dind image: make a privileged container a place where dockerd can run its
# own containers, then run the command (dockerd and its flags, from the pod's `args`).
set -eu

# dockerd looks for AppArmor (and runc for LSMs) through securityfs, which a container does not
# get mounted. Without it the engine still runs, only without that detection: warn, go on.
if [ -d /sys/kernel/security ] && ! mountpoint -q /sys/kernel/security; then
    mount -t securityfs none /sys/kernel/security ||
        echo "dind-entrypoint: could not mount securityfs; AppArmor detection is off" >&2
fi

# The engine gives its containers limits by writing to the cgroup hierarchies, and a container
# gets them read-only unless it is privileged. Where privileged is refused and the privileges
# are granted one by one instead (as on our development machines, which lack CAP_SYS_RESOURCE:
# see docs/kubernetes.md, "The worker pod on one machine"), remount them writable, which
# CAP_SYS_ADMIN allows. Under `privileged: true` they are writable already and nothing happens.
awk '$2 ~ "^/sys/fs/cgroup(/|$)" && $4 ~ /(^|,)ro(,|$)/ { print $2 }' /proc/self/mounts |
    while read -r mnt; do
        mount -o remount,rw,bind "$mnt" ||
            echo "dind-entrypoint: $mnt is read-only and could not be remounted" >&2
    done

# cgroup v2 (a private cgroup namespace): a group that has processes cannot hand controllers
# to child groups ("no internal processes"), so the engine could not give its containers
# memory, CPU or pids limits. Move every process of the namespace's root group into a leaf,
# then enable all controllers for the children. cgroup v1 needs none of this.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/init
    # A pid may exit between the read and the write (the `cat`): ignore those.
    while read -r pid; do
        echo "$pid" >/sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    done </sys/fs/cgroup/cgroup.procs
    sed -e 's/ / +/g' -e 's/^/+/' /sys/fs/cgroup/cgroup.controllers >/sys/fs/cgroup/cgroup.subtree_control
fi

exec "$@"
