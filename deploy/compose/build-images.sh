#!/usr/bin/env bash
# Build every image of the Compose stack locally; no container registry is needed. The
# names are those of images/tags.env; `make images` (images/build-all.sh) runs this script
# and then builds the images only Kubernetes needs.
#
#   bash deploy/compose/build-images.sh [--force]
#
#   rollout-sandbox:bookworm                  sandboxes, and the base of the others (images/build.sh:
#                                             debootstrap, or SANDBOX_BASE_IMAGE from a registry)
#   rollout-sandbox-service:<version>         API, worker, beat (images/service; version from pyproject.toml)
#   rollout-sandbox-redis:7.0-bookworm        Debian's redis-server (images/redis)
#   rollout-sandbox-prometheus:2.42-bookworm  Debian's prometheus (images/prometheus)
#
# Python wheels (the versions of the project's .venv) are fetched before the build into
# images/service/wheels/ (gitignored), so the service image builds with --network none.
# The Redis and Prometheus builds run apt against the Debian mirror, with --network host
# (the engine may have no bridge). Idempotent: unchanged inputs reuse the wheels and the
# engine's layer cache, a second run takes seconds. --force refetches the wheels and
# rebuilds the service, Redis and Prometheus images without the cache (the sandbox image,
# shared with `make up`, only with images/build.sh --force).
#
# Installs what is missing (deploy/install.sh, docker-compose) and, if no engine answers,
# starts one as `make up` does (deploy/deps.sh, which also starts make up's Redis).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

# shellcheck source=images/tags.env
source "$ROOT/images/tags.env"
BASE_IMAGE="$IMAGE_SANDBOX"
REDIS_IMAGE="$IMAGE_REDIS"
PROMETHEUS_IMAGE="$IMAGE_PROMETHEUS"
# The tags carry the Debian package's series (7.0-bookworm), which the builds check.
series_of() { local tag=${1##*:}; echo "${tag%-bookworm}"; }
REDIS_SERIES=$(series_of "$REDIS_IMAGE")
PROMETHEUS_SERIES=$(series_of "$PROMETHEUS_IMAGE")
COMPOSE_FILE="$ROOT/deploy/compose/docker-compose.yml"
SERVICE_CONTEXT="$ROOT/images/service"
WHEELS="$SERVICE_CONTEXT/wheels"
PY="$ROOT/.venv/bin/python"

force=0
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help)
        sed -n '2,24s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $arg (see --help)" ;;
    esac
done

timings_start

# ------------------------------------------------------------ prerequisites ----
bash "$ROOT/deploy/install.sh"
ensure_apt_packages docker-compose
if ! docker info >/dev/null 2>&1; then
    log "no Docker engine answers; starting one as make up does (deploy/deps.sh; make down stops it)"
    bash "$ROOT/deploy/deps.sh"
fi
# The wheel below carries the native guest's binary (package data of sandbox.guest).
bash "$ROOT/sandbox/guest/native/build.sh"
step_done prerequisites

VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("'"$ROOT"'/pyproject.toml", "rb"))["project"]["version"])')
SERVICE_IMAGE="$IMAGE_SERVICE"
[[ ${SERVICE_IMAGE##*:} == "$VERSION" ]] ||
    die "images/tags.env names $SERVICE_IMAGE but pyproject.toml's version is $VERSION; update the tags"
# The Compose file names the images by tag; a version bump must reach it.
for image in "$SERVICE_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE"; do
    grep -q "image: $image\$" "$COMPOSE_FILE" ||
        die "$COMPOSE_FILE does not use $image; update its image tags"
done

take_lock compose-build

# ------------------------------------------------------------ sandbox image ----
# Shared with `make up` and the tests: built when missing, never forced from here.
bash "$ROOT/images/build.sh"
step_done "sandbox image"

# ------------------------------------------------------------------- wheels ----
# Runtime dependencies of pyproject.toml, pinned to the versions the .venv runs (and tests).
requirements=$(
    "$PY" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
EOF
)
constraints=$("$ROOT/.venv/bin/pip" freeze --exclude-editable --disable-pip-version-check)
pip_version=$("$ROOT/.venv/bin/pip" --version | awk '{print $2}')
base_id=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
deps_key=$(printf '%s\n' "$base_id pip=$pip_version" "$requirements" "$constraints" | sha256sum | cut -c1-16)
# The host's CA bundle: what the host's pip trusts (a TLS-inspecting proxy's CA included).
ca_bundle=${SANDBOX_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

if ((!force)) && [[ -f $WHEELS/deps/.key && $(cat "$WHEELS/deps/.key") == "$deps_key" && -s $WHEELS/tools/pip.whl ]]; then
    log "wheels: dependencies unchanged"
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    printf '%s\n' "$requirements" >"$tmp/requirements.txt"
    printf '%s\n' "$constraints" >"$tmp/constraints.txt"
    mkdir -p "$tmp/deps" "$ROOT/.run/cache/pip-service"
    "$ROOT/.venv/bin/pip" download --disable-pip-version-check -q --only-binary=:all: --no-deps \
        "pip==$pip_version" -d "$tmp/tools"
    mv "$tmp/tools"/pip-*.whl "$tmp/tools/pip.whl"
    # Resolved by the image's own Python, not the host's: markers such as
    # `python_full_version < "3.11.3"` (redis needs async-timeout below it) and wheel tags
    # must be those of the interpreter that will import them. Host network: PyPI only.
    log "wheels: resolving the runtime dependencies with the Python of $BASE_IMAGE (PyPI)"
    ca_args=()
    if [[ -r $ca_bundle ]]; then
        ca_args=(-v "$ca_bundle:/etc/ssl/certs/host-ca.crt:ro" -e PIP_CERT=/etc/ssl/certs/host-ca.crt)
    fi
    docker run --rm --network host --user 0 --entrypoint python3 "${ca_args[@]}" \
        -e PIP_INDEX_URL -e PIP_EXTRA_INDEX_URL -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
        -v "$tmp:/build" -v "$ROOT/.run/cache/pip-service:/root/.cache/pip" \
        "$BASE_IMAGE" /build/tools/pip.whl/pip download -q --only-binary=:all: \
        -r /build/requirements.txt -c /build/constraints.txt -d /build/deps
    rm -rf "$WHEELS/deps" "$WHEELS/tools"
    mkdir -p "$WHEELS"
    mv "$tmp/deps" "$WHEELS/deps"
    mv "$tmp/tools" "$WHEELS/tools"
    echo "$deps_key" >"$WHEELS/deps/.key"
    log "wheels: $(find "$WHEELS/deps" -name '*.whl' | wc -l) dependency wheels in ${WHEELS#"$ROOT"/}/deps"
fi

# The project's own wheel, from a copy of the sources (a build in the tree would leave
# build/ behind). Rebuilt only when a source file changed; the fixed timestamp makes the same
# sources give the same wheel, so the engine's layer cache holds too.
src_key=$(cd "$ROOT" && find pyproject.toml README.md sandbox -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if ((!force)) && [[ -f $WHEELS/project/.key && $(cat "$WHEELS/project/.key") == "$src_key" ]] &&
    compgen -G "$WHEELS/project/*.whl" >/dev/null; then
    log "wheels: project sources unchanged"
else
    log "wheels: building the rollout-sandbox $VERSION wheel"
    stage=$(mktemp -d)
    (cd "$ROOT" && cp -r pyproject.toml README.md sandbox "$stage/")
    find "$stage" -name __pycache__ -prune -exec rm -rf {} +
    rm -rf "$WHEELS/project"
    SOURCE_DATE_EPOCH=315532800 "$ROOT/.venv/bin/pip" wheel --disable-pip-version-check -q --no-deps \
        -w "$WHEELS/project" "$stage"
    rm -rf "$stage"
    echo "$src_key" >"$WHEELS/project/.key"
fi
step_done wheels

# ------------------------------------------------------------------- images ----
no_cache=()
((force)) && no_cache=(--no-cache)

build_image() { # image, context, network, build args...
    local image=$1 context=$2 network=$3 logfile
    shift 3
    logfile="$ROOT/.run/compose-build-${image%%:*}.log"
    log "building $image (network $network; log: ${logfile#"$ROOT"/})"
    if ! docker build "${no_cache[@]}" --network "$network" --build-arg "BASE=$BASE_IMAGE" "$@" \
        -t "$image" "$context" >"$logfile" 2>&1; then
        tail -n 30 "$logfile" >&2
        die "building $image failed; see $logfile"
    fi
}

# The build stage first, under its own tag, so the layer cache of its dependency install
# stays tagged and the copies it replaces can be removed below.
build_image "rollout-sandbox-service-build:$VERSION" "$SERVICE_CONTEXT" none --target build
build_image "$SERVICE_IMAGE" "$SERVICE_CONTEXT" none --build-arg "VERSION=$VERSION"
step_done "service image"
# apt needs the Debian mirror: host network, as images/build.sh does for its registry path.
build_image "$REDIS_IMAGE" "$ROOT/images/redis" host --build-arg "REDIS_SERIES=$REDIS_SERIES"
step_done "redis image"
build_image "$PROMETHEUS_IMAGE" "$ROOT/images/prometheus" host --build-arg "PROMETHEUS_SERIES=$PROMETHEUS_SERIES"
step_done "prometheus image"

# Rebuilds leave the replaced images untagged; drop those of ours nothing uses any more.
for id in $(docker images -q --filter dangling=true --filter "label=org.opencontainers.image.title"); do
    title=$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.title"}}' "$id" 2>/dev/null || true)
    case $title in
    rollout-sandbox-service | rollout-sandbox-service-build | rollout-sandbox-redis | rollout-sandbox-prometheus)
        if docker rmi "$id" >/dev/null 2>&1; then log "removed replaced image ${id:0:12} ($title)"; fi
        ;;
    esac
done

for image in "$SERVICE_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE"; do
    size=$(docker image inspect -f '{{.Size}}' "$image")
    log "image $image: $((size / 1024 / 1024)) MiB (shares the $BASE_IMAGE layers)"
done
log "build times: $(timings_summary)"
