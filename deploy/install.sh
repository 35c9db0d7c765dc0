#!/usr/bin/env bash
# Install what the service needs on the host: Debian packages (Docker engine,
# Redis, debootstrap for the offline image build) and the project virtualenv.
# Safe to re-run; a second run does no network work.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(root_dir)"

# docker.io/redis-server: runtime deps. redis-tools: redis-cli for health
# checks. debootstrap (+ keyring/gpgv to verify the mirror): offline base
# image. python3-venv: virtualenv. curl/git: used by developers and tests.
# runsc: gVisor, the optional `runtime: "runsc"` of environments (deps.sh registers it).
ensure_apt_packages \
    docker.io redis-server redis-tools runsc \
    debootstrap debian-archive-keyring gpgv \
    python3-venv curl git ca-certificates

VENV="$ROOT/.venv"
STAMP="$VENV/.installed-stamp"
PYTHON="${PYTHON:-python3}"

# pyproject.toml asks for >= 3.11; fail early with a clear message instead of
# a confusing pip resolver error.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= 3.11"

# A venv whose interpreter no longer runs (e.g. the pyenv version behind its
# symlink was removed) is rebuilt from scratch; --clear also drops the stamp.
if [[ ! -d $VENV ]]; then
    log "creating virtualenv $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
elif ! "$VENV/bin/python" -c '' 2>/dev/null; then
    log "virtualenv $VENV is broken; recreating it"
    "$PYTHON" -m venv --clear "$VENV"
fi

# pip resolution costs tens of seconds even when nothing changes, so only
# re-run it when a dependency list (pyproject.toml, client/pyproject.toml) changed since
# last time. The client SDK (client/, its own distribution) goes in editable beside the
# service, with its mini-swe-agent extra: the tests drive both.
if [[ ! -f $STAMP || $ROOT/pyproject.toml -nt $STAMP || $ROOT/client/pyproject.toml -nt $STAMP ]]; then
    log "installing project, client and dev dependencies into $VENV"
    "$VENV/bin/pip" install --disable-pip-version-check -q -e "$ROOT[dev]" -e "$ROOT/client[minisweagent]"
    touch "$STAMP"
else
    log "virtualenv up to date (pyproject.toml unchanged)"
fi

log "install done"
