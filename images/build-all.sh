#!/usr/bin/env bash
# `make images`: build every image the Kubernetes manifests (k8s/) and the Compose files
# (deploy/compose/) run, and the sandbox images the tests run the product on, locally, under
# the names in images/tags.env. No container registry is contacted (images/build.sh pulls a
# base image only if SANDBOX_BASE_IMAGE names one); apt reaches the Debian mirror and pip
# reaches PyPI, nothing else.
#
#   bash images/build-all.sh [--force] [--list]
#
#   --list   print the names of the images this builds, one a line, and exit
#            (tests/unit/test_image_tags.py compares them with the manifests and Compose files)
#   --force  rebuild the service, Redis, Prometheus, dind and bundle images without the layer
#            cache (the sandbox images only with images/build.sh [--variant V] --force)
#
# In order, each step skipping what is up to date (a second run takes seconds):
#   1. sandbox, service, Redis, Prometheus   deploy/compose/build-images.sh (runs images/build.sh)
#   2. dind     images/dind: Debian's docker.io on the sandbox image (apt, --network host)
#   3. bundle   images/bundle: the service image plus `docker save` of the sandbox image
#   4. nopython, busybox   images/build.sh --variant: the sandboxes of tests/integration/test_any_image.py
# At the end every image of --list must exist, or the run fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"
# shellcheck source=images/tags.env
source "$ROOT/images/tags.env"

ALL_IMAGES=("$IMAGE_SANDBOX" "$IMAGE_SERVICE" "$IMAGE_REDIS" "$IMAGE_PROMETHEUS" "$IMAGE_DIND" "$IMAGE_BUNDLE"
    "$IMAGE_NOPYTHON" "$IMAGE_BUSYBOX")
# An image built from these inputs carries their digest in this label; equal digest, no build.
INPUTS_LABEL=org.rollout-sandbox.inputs

force=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    --list)
        printf '%s\n' "${ALL_IMAGES[@]}"
        exit 0
        ;;
    -h | --help)
        sed -n '2,20s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $arg (see --help)" ;;
    esac
done

timings_start

# ------------------------------------------- sandbox, service, redis, prometheus ----
log "images 1/4: sandbox, service, Redis and Prometheus images (deploy/compose/build-images.sh)"
compose_args=()
((force)) && compose_args=(--force)
bash "$ROOT/deploy/compose/build-images.sh" "${compose_args[@]}"
step_done "sandbox+service+redis+prometheus"

take_lock images-build

image_id() { docker image inspect -f '{{.Id}}' "$1"; }
inputs_of() { docker image inspect -f "{{index .Config.Labels \"$INPUTS_LABEL\"}}" "$1" 2>/dev/null || true; }
# The digest of some text (image ids, file contents) that decides what an image holds.
digest() { sha256sum | cut -c1-16; }

build_logged() { # image, logfile, docker build args...
    local image=$1 logfile=$2
    shift 2
    if ! docker build "$@" -t "$image" >"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        die "building $image failed; see ${logfile#"$ROOT"/}"
    fi
}

no_cache=()
((force)) && no_cache=(--no-cache)
mkdir -p "$ROOT/.run"

# -------------------------------------------------------------------------- dind ----
dind_inputs=$({
    image_id "$IMAGE_SANDBOX"
    cat "$ROOT"/images/dind/Dockerfile "$ROOT"/images/dind/entrypoint.sh
} | digest)
if ((!force)) && [[ $(inputs_of "$IMAGE_DIND") == "$dind_inputs" ]]; then
    log "images 2/4: $IMAGE_DIND is up to date"
else
    tag=${IMAGE_DIND##*:}
    log "images 2/4: building $IMAGE_DIND (Debian's docker.io ${tag%-bookworm}; apt on the Debian mirror; log: .run/images-build-dind.log)"
    # Host network: apt needs the Debian mirror, and the engine may have no bridge.
    build_logged "$IMAGE_DIND" "$ROOT/.run/images-build-dind.log" "${no_cache[@]}" --network host \
        --build-arg "BASE=$IMAGE_SANDBOX" --build-arg "DOCKER_SERIES=${tag%-bookworm}" \
        --label "$INPUTS_LABEL=$dind_inputs" "$ROOT/images/dind"
fi
step_done dind

# ------------------------------------------------------------------------ bundle ----
bundle_inputs=$({
    image_id "$IMAGE_SERVICE"
    image_id "$IMAGE_SANDBOX"
    echo "$IMAGE_SANDBOX"
    cat "$ROOT/images/bundle/Dockerfile"
} | digest)
if ((!force)) && [[ $(inputs_of "$IMAGE_BUNDLE") == "$bundle_inputs" ]]; then
    log "images 3/4: $IMAGE_BUNDLE is up to date"
else
    log "images 3/4: building $IMAGE_BUNDLE ($IMAGE_SERVICE + docker save $IMAGE_SANDBOX)"
    context="$ROOT/.run/cache/bundle-context"
    rm -rf "$context"
    mkdir -p "$context"
    # shellcheck disable=SC2064 # expand $context now
    trap "rm -rf '$context'" EXIT
    cp "$ROOT/images/bundle/Dockerfile" "$context/Dockerfile"
    docker save "$IMAGE_SANDBOX" -o "$context/rollout-sandbox.tar"
    log "images 3/4: $IMAGE_SANDBOX saved ($(($(stat -c %s "$context/rollout-sandbox.tar") / 1024 / 1024)) MiB); building"
    build_logged "$IMAGE_BUNDLE" "$ROOT/.run/images-build-bundle.log" "${no_cache[@]}" --network none \
        --build-arg "SERVICE_IMAGE=$IMAGE_SERVICE" --build-arg "SANDBOX_IMAGE=$IMAGE_SANDBOX" \
        --label "$INPUTS_LABEL=$bundle_inputs" "$context"
    rm -rf "$context"
    trap - EXIT
fi
step_done bundle

# ------------------------------------------------------------- nopython, busybox ----
# Not run by any manifest: the sandboxes the tests run the product on (no python3; busybox
# only). images/build.sh skips what is up to date (about 0.1 s each).
for variant in nopython busybox; do
    log "images 4/4: sandbox variant $variant (images/build.sh --variant $variant)"
    bash "$ROOT/images/build.sh" --variant "$variant"
done
step_done "sandbox variants"

# Rebuilds leave the replaced images untagged; drop those of ours that nothing uses any more
# (docker refuses, and we go on, while a container still uses one).
for id in $(docker images -q --filter dangling=true --filter "label=org.opencontainers.image.title"); do
    title=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$id" 2>/dev/null || true)
    case $title in
    rollout-sandbox-dind | rollout-sandbox-bundle)
        if docker rmi "$id" >/dev/null 2>&1; then log "removed replaced image ${id:0:12} ($title)"; fi
        ;;
    esac
done

for image in "${ALL_IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "$image was not built"
    size=$(docker image inspect -f '{{.Size}}' "$image")
    log "image $image: $((size / 1024 / 1024)) MiB"
done
log "make images: $(timings_summary)"
