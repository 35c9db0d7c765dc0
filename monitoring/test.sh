#!/usr/bin/env bash
# Checks the monitoring assets: Prometheus config, rule files, promtool rule unit tests,
# and that the committed Grafana dashboard JSON is what monitoring/dashboard.py generates
# (and that every one of its queries parses as PromQL).
#
#   bash monitoring/test.sh
#
# Idempotent. Installs what is missing, nothing else: Debian's `prometheus` package (for
# promtool) and grafana-foundation-sdk in the project virtualenv. Needs root only for the
# first install of the Debian package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The dashboard JSON depends on the SDK's defaults: pin it so --check means the same everywhere.
SDK_VERSION='1769699998!10.1.0'
PY=.venv/bin/python

log() { printf 'monitoring: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

apt_updated=0
apt_install() {
    [[ $(id -u) -eq 0 ]] || die "need root to apt-get install $*"
    if [[ $apt_updated -eq 0 ]]; then
        apt-get update
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# --- promtool ----------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
    log "promtool missing: installing Debian's prometheus package"
    # The package's postinst may start a prometheus daemon (it listens on all interfaces by
    # default). Remember what ran before, and stop only a daemon that appears with the install.
    before=" $({ pgrep -x prometheus || true; } | tr '\n' ' ') "
    apt_install prometheus
    sleep 1
    for pid in $(pgrep -x prometheus || true); do
        [[ $before == *" $pid "* ]] && continue
        listening=$(ss -ltnpH 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | tr '\n' ' ' || true)
        log "the prometheus package started a daemon (pid $pid, listening on: ${listening:-nothing yet}); stopping it"
        kill "$pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -0 "$pid" 2>/dev/null && die "prometheus daemon pid $pid did not stop"
    done
fi
command -v promtool >/dev/null 2>&1 || die "promtool still missing after installing prometheus"

# --- Python with grafana-foundation-sdk -------------------------------------------------
if [[ ! -x $PY ]]; then
    log "no .venv: creating it (the project's own install, deploy/install.sh, fills it later)"
    python3 -m venv .venv || die "cannot create .venv: run 'bash deploy/install.sh' first"
fi
have_sdk=$($PY -c 'import importlib.metadata as m; print(m.version("grafana-foundation-sdk"))' 2>/dev/null || true)
if [[ $have_sdk != "$SDK_VERSION" ]]; then
    log "installing grafana-foundation-sdk==$SDK_VERSION into .venv (found: ${have_sdk:-none})"
    $PY -m pip install --quiet "grafana-foundation-sdk==$SDK_VERSION"
fi

# --- the checks --------------------------------------------------------------------------
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rule_files=(monitoring/rules/*.yml)
test_files=(monitoring/tests/*.yml)

promtool check config monitoring/prometheus.yml
promtool check rules "${rule_files[@]}"
promtool test rules "${test_files[@]}"
$PY monitoring/dashboard.py --check --exprs-as-rules "$tmp/dashboard-queries.yml"
# Every panel query, with $host/$environment as "All" (.*), must parse as PromQL.
promtool check rules "$tmp/dashboard-queries.yml"

# Count what passed, from the test files themselves.
read -r alerts alert_tests expr_tests queries < <(
    $PY - "$tmp/dashboard-queries.yml" "${rule_files[@]}" -- "${test_files[@]}" <<'EOF'
import sys, yaml
args = sys.argv[1:]
split = args.index("--")
dashboard_rules, rule_files, test_files = args[0], args[1:split], args[split + 1:]
alerts = sum(1 for f in rule_files for g in yaml.safe_load(open(f))["groups"] for r in g["rules"] if "alert" in r)
tests = [t for f in test_files for t in yaml.safe_load(open(f))["tests"]]
alert_tests = sum(len(t.get("alert_rule_test", [])) for t in tests)
expr_tests = sum(len(t.get("promql_expr_test", [])) for t in tests)
queries = len(yaml.safe_load(open(dashboard_rules))["groups"][0]["rules"])
print(alerts, alert_tests, expr_tests, queries)
EOF
)
echo "monitoring: ${#rule_files[@]} rule files ($alerts alerts), $alert_tests alert tests passed" \
    "(+ $expr_tests expression tests, $queries dashboard queries checked)"
