#!/usr/bin/env bash
# Build the rollout sandbox image (default rollout-sandbox:bookworm).
#
#   images/build.sh [--force] [--offline]
#
# Default path, no registry contacted: debootstrap a bookworm rootfs from the
# Debian mirror apt already uses, import it as a base image and build
# images/sandbox/Dockerfile on it with no network. The rootfs tarball is cached
# in .run/cache/, so a rebuild skips debootstrap (delete the tarball to refresh
# it). Registry path, only when SANDBOX_BASE_IMAGE names an image (e.g.
# debian:bookworm-slim): build on that image, pulled if it is not local; if the
# pull fails, the offline path is taken instead.
#
# Env: SANDBOX_IMAGE (image name, default IMAGE_SANDBOX of images/tags.env),
#      SANDBOX_BASE_IMAGE (registry base image; unset: none is contacted),
#      SANDBOX_BUILD_OFFLINE=1 (same as --offline: ignore SANDBOX_BASE_IMAGE).
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib.sh"
ROOT="$(root_dir)"

# shellcheck source=images/tags.env
source "$ROOT/images/tags.env"
IMAGE="${SANDBOX_IMAGE:-$IMAGE_SANDBOX}"
# No default: no build contacts a container registry unless this names one.
REGISTRY_BASE="${SANDBOX_BASE_IMAGE:-}"
OFFLINE_BASE="rollout-sandbox-base:bookworm"
SUITE="bookworm"
CACHE_DIR="$ROOT/.run/cache"
CACHE_TAR="$CACHE_DIR/$SUITE-minbase.tar"
# Bump when the rootfs recipe below changes, so old cached tarballs are redone.
CACHE_FORMAT=2
CONTEXT="$ROOT/images/sandbox"
# Keep in sync with PACKAGES in images/sandbox/Dockerfile: the offline base
# must already contain all of them, since its build has no network.
PACKAGES=(bash coreutils findutils grep sed ripgrep git python3 python3-pytest procps ca-certificates)

force=0
offline="${SANDBOX_BUILD_OFFLINE:-0}"
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    --offline) offline=1 ;;
    -h | --help)
        sed -n '2,16s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $arg (see --help)" ;;
    esac
done

docker info >/dev/null 2>&1 || die "docker engine not reachable; run deploy/deps.sh first"
mkdir -p "$CACHE_DIR"
take_lock build

# Checked after taking the lock: a concurrent run may just have built it.
# The recipe an image was built with is in its label: an image of an older recipe (say,
# without a package added since) is rebuilt, so a checkout never runs on a stale image.
RECIPE="packages=${PACKAGES[*]}"
built_recipe=$(docker image inspect -f '{{index .Config.Labels "org.rollout-sandbox.recipe"}}' "$IMAGE" 2>/dev/null || true)
if ((!force)) && [[ $built_recipe == "$RECIPE" ]]; then
    log "image $IMAGE already exists; nothing to do (--force rebuilds it)"
    exit 0
fi
if [[ -n $built_recipe && $built_recipe != "$RECIPE" ]]; then
    log "image $IMAGE was built from an older recipe; rebuilding it"
fi

start=$SECONDS
# Images this run may replace; removed at the end once nothing uses them.
old_ids=$(docker image inspect -f '{{.Id}}' "$IMAGE" "$OFFLINE_BASE" 2>/dev/null || true)
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

# ---------------------------------------------------------- helpers ----

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

build_rootfs_tarball() {
    local mirror workdir rootfs include
    mirror=$(debian_mirror)
    include=$(
        IFS=,
        echo "${PACKAGES[*]}"
    )
    workdir=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-rootfs.XXXXXX")
    # Removed however the script ends (error, Ctrl-C, success).
    # shellcheck disable=SC2064 # expand $workdir now, it is local
    trap "cleanup_workdir '$workdir'" EXIT
    rootfs="$workdir/rootfs"

    log "debootstrap $SUITE (minbase + ${#PACKAGES[@]} packages) from $mirror (about a minute on a fast mirror)"
    log "full debootstrap log: $CACHE_DIR/debootstrap.log"
    if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$mirror" 2>&1 |
        tee "$CACHE_DIR/debootstrap.log" | phase_filter; then
        tail -n 20 "$CACHE_DIR/debootstrap.log" >&2
        die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
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

    # Write under a temporary name first: an interrupted run must not leave a
    # truncated tarball that later runs would trust.
    log "writing rootfs tarball $CACHE_TAR"
    tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$CACHE_TAR.tmp" .
    mv -f "$CACHE_TAR.tmp" "$CACHE_TAR"
    rm -f "$CACHE_TAR.packages" # key file of an older version of this script
    cache_key >"$CACHE_TAR.key"

    cleanup_workdir "$workdir"
    trap - EXIT
}

# ------------------------------------------------------------ build ----

# An interrupt should run the EXIT trap (temp rootfs cleanup) too.
trap 'exit 130' INT TERM

base=""
if ((!offline)) && [[ -n $REGISTRY_BASE ]]; then
    if docker image inspect "$REGISTRY_BASE" >/dev/null 2>&1; then
        log "using local $REGISTRY_BASE"
        base=$REGISTRY_BASE
    else
        log "pulling $REGISTRY_BASE (60 s limit)"
        if timeout 60 docker pull -q "$REGISTRY_BASE"; then
            base=$REGISTRY_BASE
        else
            log "pull failed (no registry reachable?); switching to the offline build"
        fi
    fi
fi

if [[ -n $base ]]; then
    # apt inside the build may need the mirror; host network because the
    # engine may run without a bridge (dockerd --bridge=none).
    network=host
else
    base=$OFFLINE_BASE
    fresh_tarball=0
    if cache_valid; then
        log "reusing cached rootfs $CACHE_TAR"
    else
        build_rootfs_tarball
        fresh_tarball=1
    fi
    # Re-import only when the rootfs changed: every import makes a new image
    # id, which would also defeat the build cache below.
    if ((fresh_tarball)) || ! docker image inspect "$OFFLINE_BASE" >/dev/null 2>&1; then
        log "importing rootfs as $OFFLINE_BASE"
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]' \
            - "$OFFLINE_BASE" <"$CACHE_TAR" >/dev/null
    fi
    # Every package is already in the base, so the build must not need network;
    # --network none proves it (and works without a docker bridge).
    network=none
fi

log "building $IMAGE on $base"
docker build --network "$network" --build-arg "BASE=$base" --build-arg "PACKAGES=${PACKAGES[*]}" \
    --label "org.rollout-sandbox.recipe=$RECIPE" -t "$IMAGE" "$CONTEXT"

# Drop the images this build replaced, so repeated rebuilds don't pile up
# untagged copies. Without -f, docker refuses while a container still uses
# one, or while it is still tagged (i.e. nothing changed): both are fine.
for id in $old_ids; do
    if [[ -z $(docker image inspect -f '{{join .RepoTags ""}}' "$id" 2>/dev/null) ]]; then
        docker rmi "$id" >/dev/null 2>&1 && log "removed replaced image ${id:7:12}" || true
    fi
done

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE ($((size / 1024 / 1024)) MiB) in $(elapsed)"
