#!/usr/bin/env bash
# Build a rollout sandbox image: the default one (rollout-sandbox:bookworm), or a variant the
# tests run the product on (tests/integration/test_any_image.py).
#
#   images/build.sh [--variant default|nopython|busybox] [--force] [--offline]
#
# default: no registry contacted. Debootstrap a bookworm rootfs from the Debian mirror apt
#   already uses, import it as a base image and build images/sandbox/Dockerfile on it with
#   no network. The rootfs tarball is cached in .run/cache/, so a rebuild skips debootstrap
#   (delete the tarball to refresh it). Registry path, only when SANDBOX_BASE_IMAGE names an
#   image (e.g. debian:bookworm-slim): build on that image, pulled if it is not local; if
#   the pull fails, the offline path is taken instead.
# nopython: IMAGE_NOPYTHON, the same Dockerfile on a bare minbase (bash and coreutils, no
#   python3), always offline; its own cached tarball.
# busybox: IMAGE_BUSYBOX, no Debian userland at all: Debian's busybox-static (apt-get
#   download, cached in .run/cache/busybox/) with its applets, the sandbox user and the
#   same directories, imported FROM scratch. No bash.
# Each variant is rebuilt only when missing or built from an older recipe (its label).
#
# Env: SANDBOX_IMAGE (default variant's name, default IMAGE_SANDBOX of images/tags.env),
#      SANDBOX_BASE_IMAGE (registry base image; unset: none is contacted),
#      SANDBOX_BUILD_OFFLINE=1 (same as --offline: ignore SANDBOX_BASE_IMAGE).
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../deploy/lib.sh"
ROOT="$(root_dir)"
# shellcheck source=images/lib-rootfs.sh
source "$ROOT/images/lib-rootfs.sh"
# shellcheck source=images/tags.env
source "$ROOT/images/tags.env"

SUITE="bookworm"
CACHE_DIR="$ROOT/.run/cache"
# Bump when a rootfs recipe (images/lib-rootfs.sh) changes, so old cached tarballs are redone.
CACHE_FORMAT=2
CONTEXT="$ROOT/images/sandbox"
# The sandbox user of images/sandbox/Dockerfile; the busybox image has the same.
SANDBOX_USER=sandbox
SANDBOX_UID=1000

variant=default
force=0
offline="${SANDBOX_BUILD_OFFLINE:-0}"
while (($#)); do
    case $1 in
    --variant)
        (($# >= 2)) || die "--variant needs a value: default, nopython or busybox"
        variant=$2
        shift
        ;;
    --variant=*) variant=${1#--variant=} ;;
    --force) force=1 ;;
    --offline) offline=1 ;;
    -h | --help)
        sed -n '2,22s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

case $variant in
default)
    IMAGE="${SANDBOX_IMAGE:-$IMAGE_SANDBOX}"
    OFFLINE_BASE="rollout-sandbox-base:bookworm"
    CACHE_TAR="$CACHE_DIR/$SUITE-minbase.tar"
    # Keep in sync with PACKAGES in images/sandbox/Dockerfile: the offline base
    # must already contain all of them, since its build has no network.
    PACKAGES=(bash coreutils findutils grep sed ripgrep git python3 python3-pytest procps ca-certificates)
    TITLE=""
    ;;
nopython)
    IMAGE="$IMAGE_NOPYTHON"
    OFFLINE_BASE="rollout-sandbox-base-nopython:bookworm"
    CACHE_TAR="$CACHE_DIR/$SUITE-minbase-nopython.tar"
    # Both are in minbase already (Essential): named so the Dockerfile checks them.
    PACKAGES=(bash coreutils)
    TITLE="rollout-sandbox-nopython"
    offline=1
    ;;
busybox)
    IMAGE="$IMAGE_BUSYBOX"
    TITLE="rollout-sandbox-busybox"
    ;;
*) die "unknown variant: $variant (default, nopython or busybox)" ;;
esac
# No default: no build contacts a container registry unless this names one.
REGISTRY_BASE="${SANDBOX_BASE_IMAGE:-}"

docker info >/dev/null 2>&1 || die "docker engine not reachable; run deploy/deps.sh first"
mkdir -p "$CACHE_DIR"
take_lock build
# An interrupt should run the EXIT trap (temp rootfs cleanup) too.
trap 'exit 130' INT TERM

# ------------------------------------------------------------ busybox ----

if [[ $variant == busybox ]]; then
    deb=$(busybox_deb)
    # The recipe names the .deb (its version), so a newer busybox-static rebuilds the image.
    RECIPE="busybox=$(basename "$deb") format=$CACHE_FORMAT user=$SANDBOX_USER:$SANDBOX_UID"
    if ((!force)) && image_up_to_date "$IMAGE" "$RECIPE"; then
        exit 0
    fi
    old_ids=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    tarball="$CACHE_DIR/busybox-rootfs.tar"
    log "assembling a busybox-only rootfs from $(basename "$deb")"
    busybox_rootfs_tarball "$deb" "$tarball" "$SANDBOX_USER" "$SANDBOX_UID"
    log "importing it as $IMAGE (FROM scratch: docker import, no registry)"
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL org.opencontainers.image.title=$TITLE" \
        --change "LABEL $RECIPE_LABEL=\"$RECIPE\"" \
        --change 'WORKDIR /workspace' \
        --change "USER $SANDBOX_USER" \
        --change 'CMD ["sleep", "infinity"]' \
        - "$IMAGE" <"$tarball" >/dev/null
    rm -f "$tarball"
    # shellcheck disable=SC2086 # a list of ids
    remove_replaced $old_ids
    log_built "$IMAGE"
    exit 0
fi

# ---------------------------------------------------- default, nopython ----

# Checked after taking the lock: a concurrent run may just have built it.
# The recipe an image was built with is in its label: an image of an older recipe (say,
# without a package added since) is rebuilt, so a checkout never runs on a stale image.
RECIPE="packages=${PACKAGES[*]}"
if ((!force)) && image_up_to_date "$IMAGE" "$RECIPE"; then
    exit 0
fi
# Images this run may replace; removed at the end once nothing uses them.
old_ids=$(docker image inspect -f '{{.Id}}' "$IMAGE" "$OFFLINE_BASE" 2>/dev/null || true)

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
    import_rootfs_base "$OFFLINE_BASE" "$fresh_tarball"
    # Every package is already in the base, so the build must not need network;
    # --network none proves it (and works without a docker bridge).
    network=none
fi

log "building $IMAGE on $base"
labels=(--label "$RECIPE_LABEL=$RECIPE")
[[ -n $TITLE ]] && labels+=(--label "org.opencontainers.image.title=$TITLE")
docker build --network "$network" --build-arg "BASE=$base" --build-arg "PACKAGES=${PACKAGES[*]}" \
    "${labels[@]}" -t "$IMAGE" "$CONTEXT"

# shellcheck disable=SC2086 # a list of ids
remove_replaced $old_ids
log_built "$IMAGE"
