# shellcheck shell=bash
# Shared helpers for deploy/*.sh and images/build.sh. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It only defines functions; the caller owns `set -euo pipefail`.

# Progress lines share one prefix so they stand out from apt/pip/docker noise.
log() { printf '[setup] %s\n' "$*"; }

die() {
    log "ERROR: $*" >&2
    exit 1
}

# Project root = parent of the directory holding this file (deploy/), so the
# scripts work from any cwd and from any checkout location.
root_dir() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P); }

# True if <pidfile> names a live process. A pidfile left behind by a dead
# process must read as "not alive", so callers can replace it safely.
pid_alive() {
    local pidfile=$1 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
    # A zombie (exited, not yet reaped by its parent) still passes kill -0.
    [[ $(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) != Z ]]
}

# wait_for <seconds> <command...>: re-run the command (output hidden) until it
# succeeds or the time runs out. Daemons answer some time after they fork.
wait_for() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.5
    done
}

# Install Debian packages that are missing. `apt-get update` is slow and needs
# the mirror, so it runs only when something is missing, at most once per run.
ensure_apt_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        if [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) != "install ok installed" ]]; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "apt packages already installed: $*"
        return 0
    fi
    log "installing apt packages: ${missing[*]}"
    if [[ -z ${_SETUP_APT_UPDATED:-} ]]; then
        apt-get update -q
        _SETUP_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# take_lock <name>: serialize concurrent runs of the same script (e.g. two
# `make up` at once would otherwise start two daemons). Held on fd 9 until
# the script exits; daemons started meanwhile must get `9>&-` so they do not
# inherit it and keep the lock held for their whole life.
take_lock() {
    local lockfile
    lockfile="$(root_dir)/.run/$1.lock"
    mkdir -p "$(dirname "$lockfile")"
    exec 9>"$lockfile"
    if ! flock -n 9; then
        log "another $1 run is in progress; waiting for it"
        flock 9
    fi
}

# Where a long script's time went: timings_start once, step_done NAME after each step, then
# log "...: $(timings_summary)".
timings_start() {
    timings_started=$SECONDS
    step_start=$SECONDS
    timings=()
}
step_done() { # name
    timings+=("$1 $((SECONDS - step_start)) s")
    step_start=$SECONDS
}
timings_summary() {
    local joined
    joined=$(printf '%s, ' "${timings[@]}")
    echo "${joined%, }; total $((SECONDS - timings_started)) s"
}
