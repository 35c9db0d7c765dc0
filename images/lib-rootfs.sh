# shellcheck shell=bash
# Shared by images/build.sh's variants: a Debian rootfs from debootstrap (cached as a
# tarball), a busybox-only rootfs from Debian's busybox-static, and the image bookkeeping
# (the recipe label, the replaced images). Source it after deploy/lib.sh; it only defines
# functions. The caller sets:
#   SUITE       Debian suite, e.g. bookworm
#   CACHE_DIR   where tarballs, .debs and logs are kept (.run/cache)
#   CACHE_TAR   the rootfs tarball of this variant (debootstrap only)
#   PACKAGES    array: what debootstrap adds to minbase (debootstrap only)
#   CACHE_FORMAT  bumped when a recipe below changes, so old cached tarballs are redone

RECIPE_LABEL=org.rollout-sandbox.recipe
BUILD_STARTED=$SECONDS

elapsed() {
    local s=$((SECONDS - BUILD_STARTED))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# ------------------------------------------------------------ debootstrap ----

# First URI of the apt source serving "$SUITE", from the deb822 file Debian 12
# uses, else from the classic one-line sources.list. Debootstrap must use the
# same mirror as apt: it may be the only reachable one.
debian_mirror() {
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        # RS="" reads one blank-line-separated stanza per record.
        uri=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; hit = 0
                for (i = 1; i <= NF; i++) {
                    n = split($i, w, /[ \t]+/)
                    if (w[1] == "URIs:") uri = w[2]
                    if (w[1] == "Suites:") for (j = 2; j <= n; j++) if (w[j] == suite) hit = 1
                }
                if (hit && uri != "") { print uri; exit }
            }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $uri && -r /etc/apt/sources.list ]]; then
        # deb [options] URI suite components...
        uri=$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Debootstrap prints several lines per package; show only the first line of
# each kind (Retrieving, Validating, Extracting, ...) and keep the full log.
phase_filter() {
    awk '!seen[$2]++ { print "[setup]   debootstrap: " $0; fflush() }'
}

# Debootstrap bind-mounts /proc, /sys and sometimes the host /dev into the
# target, and leaves them mounted if it fails. Unmount everything below a dir,
# deepest first, before archiving or deleting it.
unmount_below() {
    local mnt
    awk -v d="$1" 'index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r |
        while read -r mnt; do umount "$mnt" 2>/dev/null || umount -l "$mnt" || true; done
}

# Delete the temporary rootfs, but never through a mount: `rm -rf` across a
# bind mount of /dev would delete the host's device nodes.
cleanup_workdir() {
    local dir=$1
    [[ -d $dir ]] || return 0
    unmount_below "$dir"
    if awk -v d="$dir" 'index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        log "WARNING: mounts remain under $dir; leaving it in place"
        return 0
    fi
    # --one-file-system: a second guard against crossing into a mount.
    rm -rf --one-file-system "$dir"
}

# The cached tarball is only valid for the recipe and package list it was
# made with; the key file next to it records both.
cache_key() { echo "format=$CACHE_FORMAT packages=${PACKAGES[*]}"; }
cache_valid() {
    [[ -s $CACHE_TAR && -f $CACHE_TAR.key && $(cat "$CACHE_TAR.key") == "$(cache_key)" ]]
}

# Trim what nobody reads inside a sandbox (docs, man pages, translations:
# ~70 MB), as the official -slim images do; the dpkg config keeps packages
# installed later trimmed too. Directories stay: some maintainer scripts
# expect e.g. /usr/share/man/man1 to exist.
slim_rootfs() {
    local rootfs=$1
    # Refuse anything but a debootstrapped tree: these deletions must never
    # hit the host's own /usr/share.
    [[ -n $rootfs && $rootfs != / && -f $rootfs/etc/debian_version && -d $rootfs/usr/share/doc ]] ||
        die "slim_rootfs: '$rootfs' is not a rootfs"
    printf '%s\n' \
        'path-exclude /usr/share/doc/*' \
        'path-include /usr/share/doc/*/copyright' \
        'path-exclude /usr/share/man/*' \
        'path-exclude /usr/share/info/*' \
        'path-exclude /usr/share/locale/*' \
        'path-include /usr/share/locale/locale.alias' \
        >"$rootfs/etc/dpkg/dpkg.cfg.d/90-sandbox-slim"
    find "$rootfs/usr/share/doc" ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/man" "$rootfs/usr/share/info" ! -type d -delete
    find "$rootfs/usr/share/locale" ! -type d ! -name locale.alias -delete
}

# Write a rootfs directory to "$1" under a temporary name first: an interrupted run must not
# leave a truncated tarball that later runs would trust.
write_tarball() { # rootfs, tarball
    tar -C "$1" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$2.tmp" .
    mv -f "$2.tmp" "$2"
}

# debootstrap minbase + PACKAGES into CACHE_TAR (and its key file).
build_rootfs_tarball() {
    local mirror workdir rootfs include logfile
    mirror=$(debian_mirror)
    include=$(
        IFS=,
        echo "${PACKAGES[*]}"
    )
    logfile="$CACHE_DIR/$(basename "$CACHE_TAR" .tar).debootstrap.log"
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-rootfs.XXXXXX")
    # Removed however the script ends (error, Ctrl-C, success).
    # shellcheck disable=SC2064 # expand $workdir now, it is local
    trap "cleanup_workdir '$workdir'" EXIT
    rootfs="$workdir/rootfs"

    log "debootstrap $SUITE (minbase + ${#PACKAGES[@]} packages) from $mirror (about a minute on a fast mirror)"
    log "full debootstrap log: $logfile"
    if ! debootstrap --variant=minbase ${include:+--include="$include"} "$SUITE" "$rootfs" "$mirror" 2>&1 |
        tee "$logfile" | phase_filter; then
        tail -n 20 "$logfile" >&2
        die "debootstrap failed; see $logfile"
    fi
    log "debootstrap finished after $(elapsed)"

    # Nothing inside the image needs the package index or downloaded .debs.
    # resolv.conf/hostname were copied from this host; docker provides its own.
    log "trimming rootfs (apt lists and caches, host files, docs)"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
        "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    rm -f "$rootfs"/etc/resolv.conf "$rootfs"/etc/hostname
    slim_rootfs "$rootfs"
    # Debootstrap unmounts after itself; make sure no host /dev, /proc or /sys
    # content gets archived if it did not.
    unmount_below "$rootfs"

    log "writing rootfs tarball $CACHE_TAR"
    write_tarball "$rootfs" "$CACHE_TAR"
    rm -f "$CACHE_TAR.packages" # key file of an older version of this script
    cache_key >"$CACHE_TAR.key"

    cleanup_workdir "$workdir"
    trap - EXIT
}

# Import CACHE_TAR as image "$1" when the tarball is new or the image is missing: every
# import makes a new image id, which would also defeat the build cache on top of it.
import_rootfs_base() { # image, fresh (1: the tarball was just made)
    if (($2)) || ! docker image inspect "$1" >/dev/null 2>&1; then
        log "importing rootfs as $1"
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            - "$1" <"$CACHE_TAR" >/dev/null
    fi
}

# --------------------------------------------------------------- busybox ----

# Debian's busybox-static .deb, downloaded once into CACHE_DIR/busybox (delete it to take a
# newer one from the mirror). Prints its path.
busybox_deb() {
    local dir="$CACHE_DIR/busybox" deb
    mkdir -p "$dir"
    deb=$(find "$dir" -maxdepth 1 -name 'busybox-static_*.deb' -print -quit)
    if [[ -z $deb ]]; then
        log "downloading Debian's busybox-static (apt-get download, the mirror apt uses)" >&2
        # As root: apt's _apt user cannot write into .run/cache.
        (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root busybox-static >&2) ||
            die "apt-get download busybox-static failed (apt-get update first?)"
        deb=$(find "$dir" -maxdepth 1 -name 'busybox-static_*.deb' -print -quit)
        [[ -n $deb ]] || die "apt-get download left no busybox-static .deb in $dir"
    fi
    echo "$deb"
}

# A rootfs holding only /bin/busybox and its applets as symlinks (what `busybox --install -s`
# makes), root and one user "$3" (uid and gid "$4") in /etc/passwd and /etc/group, /tmp 1777,
# /workspace owned by the user and the guest's two root-owned mount points; written to "$2".
busybox_rootfs_tarball() { # deb, tarball, user, uid
    local deb=$1 tarball=$2 user=$3 uid=$4 workdir root applet
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-busybox.XXXXXX")
    # shellcheck disable=SC2064 # expand $workdir now, it is local
    trap "rm -rf --one-file-system '$workdir'" EXIT
    dpkg-deb -x "$deb" "$workdir/deb"
    root="$workdir/rootfs"
    install -d -m 0755 "$root"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,var,home,opt}
    install -d -m 0700 "$root/root"
    install -d -m 1777 "$root/tmp"
    install -m 0755 "$workdir/deb/bin/busybox" "$root/bin/busybox"
    # --list-full names each applet by its install path (bin/sh, usr/bin/awk, ...): a static
    # binary, so the host runs it.
    while read -r applet; do
        [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    done < <("$root/bin/busybox" --list-full)
    [[ -L $root/bin/sh && ! -e $root/bin/bash ]] || die "busybox rootfs: expected /bin/sh and no /bin/bash"
    printf '%s\n' "root:x:0:0:root:/root:/bin/sh" "$user:x:$uid:$uid::/home/$user:/bin/sh" \
        >"$root/etc/passwd"
    printf '%s\n' "root:x:0:" "$user:x:$uid:" >"$root/etc/group"
    install -d -o "$uid" -g "$uid" -m 0755 "$root/workspace" "$root/home/$user"
    install -d -o 0 -g 0 -m 0755 "$root/run/sandbox-guest" "$root/opt/sandbox-guest"
    write_tarball "$root" "$tarball"
    rm -rf --one-file-system "$workdir"
    trap - EXIT
}

# ------------------------------------------------------------ bookkeeping ----

# True (and says so) when image "$1" exists and was built from recipe "$2".
image_up_to_date() { # image, recipe
    local built
    built=$(docker image inspect -f "{{index .Config.Labels \"$RECIPE_LABEL\"}}" "$1" 2>/dev/null || true)
    if [[ $built == "$2" ]]; then
        log "image $1 already exists; nothing to do (--force rebuilds it)"
        return 0
    fi
    if [[ -n $built ]]; then
        log "image $1 was built from an older recipe; rebuilding it"
    fi
    return 1
}

# Drop the images a build replaced (ids "$@"), so repeated rebuilds don't pile up untagged
# copies. Without -f, docker refuses while a container still uses one, or while it is still
# tagged (i.e. nothing changed): both are fine.
remove_replaced() { # image ids...
    local id
    for id in "$@"; do
        if [[ -z $(docker image inspect -f '{{join .RepoTags ""}}' "$id" 2>/dev/null) ]]; then
            if docker rmi "$id" >/dev/null 2>&1; then log "removed replaced image ${id:7:12}"; fi
        fi
    done
}

log_built() { # image
    local size
    size=$(docker image inspect -f '{{.Size}}' "$1")
    log "built $1 ($((size / 1024 / 1024)) MiB) in $(elapsed)"
}
