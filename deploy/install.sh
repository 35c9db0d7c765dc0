#!/usr/bin/env bash
# Install what the service needs on the host: Debian packages (Docker engine,
# Redis, debootstrap for the offline image build), the project virtualenv and a
# second one for verifiers (an E2B client the tests drive).
# Safe to re-run; a second run does no network work.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(root_dir)"

# docker.io/redis-server: runtime deps. redis-tools: redis-cli for health
# checks. debootstrap (+ keyring/gpgv to verify the mirror): offline base
# image. python3-venv: virtualenv. curl/git: used by developers and tests.
# runsc: gVisor, the optional `runtime: "runsc"` of environments (deps.sh registers it).
# golang-go: builds the native guest offline (sandbox/guest/native/build.sh; stdlib only).
ensure_apt_packages \
    docker.io redis-server redis-tools runsc \
    debootstrap debian-archive-keyring gpgv \
    python3-venv curl git ca-certificates golang-go

VENV="$ROOT/.venv"
STAMP="$VENV/.installed-stamp"
PYTHON="${PYTHON:-python3}"

# pyproject.toml asks for >= 3.11; fail early with a clear message instead of
# a confusing pip resolver error.
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is $("$PYTHON" -V 2>&1); need Python >= 3.11"

# ensure_venv <dir>: create the virtualenv if missing. A venv whose interpreter no longer
# runs (e.g. the pyenv version behind its symlink was removed) is rebuilt from scratch;
# --clear also drops the stamp.
ensure_venv() {
    local venv=$1
    if [[ ! -d $venv ]]; then
        log "creating virtualenv $venv with $("$PYTHON" -V 2>&1)"
        "$PYTHON" -m venv "$venv"
    elif ! "$venv/bin/python" -c '' 2>/dev/null; then
        log "virtualenv $venv is broken; recreating it"
        "$PYTHON" -m venv --clear "$venv"
    fi
}
ensure_venv "$VENV"

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

# verifiers' E2B runtime, the one consumer of the E2B-compatible API (/e2b) beyond the e2b
# SDK itself: tests/integration/test_e2b_verifiers.py drives it against the service. It
# gets a virtualenv of its own because verifiers pulls ~105 packages (numpy, openai, mcp,
# ...) whose pins must not move the service's. Both are pinned; the stamp holds the pins,
# so pip runs again only when they change here (or the venv was recreated). e2b is the
# newest release verifiers 0.4.0 can have: later ones need connectrpc>=0.12, which its
# prime-sandboxes dependency refuses (<0.12); the service's own venv tests e2b 2.63.0.
VF_VENV="$ROOT/.venv-verifiers"
VF_STAMP="$VF_VENV/.installed-stamp"
VF_REQUIREMENTS=('verifiers[e2b]==0.4.0' 'e2b==2.56.0')
ensure_venv "$VF_VENV"
if [[ $(cat "$VF_STAMP" 2>/dev/null) != "${VF_REQUIREMENTS[*]}" ]]; then
    log "installing ${VF_REQUIREMENTS[*]} into $VF_VENV"
    "$VF_VENV/bin/pip" install --disable-pip-version-check -q "${VF_REQUIREMENTS[@]}"
    printf '%s\n' "${VF_REQUIREMENTS[*]}" >"$VF_STAMP"
else
    log "virtualenv $VF_VENV up to date (${VF_REQUIREMENTS[*]})"
fi

log "install done"
