#!/usr/bin/env bash
# Smoke test of the Compose stack on this machine: build the images, start the stack with
# the host-network override, make real tool calls over HTTP, check persistence and
# Prometheus, print the timings, and take everything down again (also on failure).
#
#   bash deploy/compose/smoke.sh [--skip-build]
#
# It runs as its own Compose project (rollout-sandbox-smoke) with its own instance name,
# Redis key prefix, volumes and host state directory, so it never touches `make up`, the
# test suite, or a real Compose stack's sandboxes. It needs the host-network ports (18000,
# 16379, 19101, 19090) free, so it refuses to run while a Compose stack is up. Everything
# talks over 127.0.0.1; the sandbox containers have no network.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$HERE/../.." && pwd -P)"
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

PROJECT="rollout-sandbox-smoke"
INSTANCE="compose-smoke"
API=http://127.0.0.1:18000
PROMETHEUS=http://127.0.0.1:19090
PORTS=(18000 16379 19101 19090)

skip_build=0
for arg in "$@"; do
    case $arg in
    --skip-build) skip_build=1 ;;
    -h | --help)
        sed -n '2,12s/^# \{0,1\}//p' "$0"
        exit 0
        ;;
    *) die "unknown argument: $arg (see --help)" ;;
    esac
done

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
timings=()
note_time() { timings+=("$(printf '%-36s %7s s' "$1" "$2")"); }
check() { log "ok: $*"; }
fail() { die "smoke: $*"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "${PORTS[@]}"; do
    port_taken "$port" && fail "port $port on 127.0.0.1 is in use (a Compose stack already up?); stop it first"
done

# ------------------------------------------------------------------- build ----
if ((!skip_build)); then
    t=$(now)
    bash "$HERE/build-images.sh"
    note_time "build-images.sh" "$(since "$t")"
fi
command -v docker-compose >/dev/null || fail "docker-compose missing (build-images.sh installs it)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers"

# -------------------------------------------------------------- the stack ----
# Host directories the engine bind-mounts into the sandboxes (same path in the worker).
# Short: the worker reaches each guest's socket at $STATE/run/<host id>/<container name>/guest.sock,
# and a unix socket path has at most 107 bytes (/var/tmp/rollout-sandbox-smoke.XXXXXX made it 111).
STATE=$(mktemp -d /var/tmp/rsb-smoke.XXXXXX)
TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
cat >"$STATE/env" <<EOF
SANDBOX_API_TOKENS=$TOKEN
SANDBOX_INSTANCE=$INSTANCE
SANDBOX_KEY_PREFIX=$INSTANCE
SANDBOX_HOST_ID=compose-smoke-1
SANDBOX_COMPOSE_STATE_DIR=$STATE
SANDBOX_COMPOSE_WORKSPACES=$STATE/workspaces
EOF
compose=(docker-compose -p "$PROJECT" --env-file "$STATE/env"
    -f "$HERE/docker-compose.yml" -f "$HERE/docker-compose.hostnet.yml")

cleanup() {
    local rc=$? t
    trap - EXIT INT TERM
    if ((rc != 0)); then
        log "smoke test FAILED (exit $rc); last lines of the service logs:"
        "${compose[@]}" logs --no-color --tail 30 >&2 || true
    fi
    t=$(now)
    log "taking the stack down"
    "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || log "WARNING: docker-compose down failed"
    # The sandboxes are the worker's containers, not Compose's: remove this instance's.
    local ids
    mapfile -t ids < <(docker ps -aq --filter "label=sandbox.instance=$INSTANCE")
    ((${#ids[@]} == 0)) || docker rm -f "${ids[@]}" >/dev/null
    rm -rf "$STATE"
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" --filter "label=sandbox.instance=$INSTANCE")
    left+=$(docker ps -aq --filter "label=sandbox.instance=$INSTANCE")
    if [[ -n $left ]]; then
        log "WARNING: containers left behind: $left"
        rc=1
    else
        log "down in $(since "$t") s; no containers left behind"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Validate before starting anything: the Prometheus configurations are in step with
# monitoring/prometheus.yml, and every combination of files interpolates and parses.
"$ROOT/.venv/bin/python" "$HERE/prometheus/render.py" --check
for override in docker-compose.hostnet.yml docker-compose.ports.yml; do
    docker-compose --env-file "$STATE/env" -f "$HERE/docker-compose.yml" -f "$HERE/$override" \
        --profile grafana config -q
done
check "Compose files and Prometheus configurations valid"
t=$(now)
log "docker-compose up -d (project $PROJECT, host network)"
"${compose[@]}" up -d
note_time "docker-compose up -d" "$(since "$t")"
wait_for 120 curl -fsS -o /dev/null "$API/readyz" || {
    curl -sS "$API/readyz" >&2 || true
    fail "the API did not become ready within 120 s"
}
note_time "up -d until /readyz answers 200" "$(since "$t")"
check "/readyz: $(curl -fsS "$API/readyz" | python3 -c 'import json, sys; d = json.load(sys.stdin); print("ready", d["ready"], "hosts", ",".join(d["checks"]["hosts"]))')"

# No Compose network may exist: the host-network run creates no bridge.
networks=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
[[ -z $networks ]] || fail "Compose created networks: $networks"
check "no Compose network created"

# ------------------------------------------------------------- tool calls ----
# call <tool> <rollout id> <call id> <arguments as JSON>: POST the Agent RFT function_call;
# the body lands in $STATE/body, the headers in $STATE/headers; prints the HTTP status.
call() {
    local body
    body=$(python3 -c 'import json, sys
tool, rollout, call_id, arguments = sys.argv[1:]
print(json.dumps({"type": "function_call", "id": "fc_" + call_id, "call_id": call_id, "name": tool,
                  "arguments": arguments, "trace_id": rollout}))' "$@")
    curl -sS -o "$STATE/body" -D "$STATE/headers" -w '%{http_code} %{time_total}\n' \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "$body" "$API/v1/tools/$1"
}
output() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["output"], end="")' "$STATE/body"; }
header() { awk -v h="$1:" 'tolower($1) == tolower(h) { sub(/\r$/, "", $2); print $2 }' "$STATE/headers"; }
expect_call() { # label, expected outcome, expected text, call args...
    local label=$1 outcome=$2 text=$3 status secs
    shift 3
    read -r status secs < <(call "$@")
    [[ $status == 200 ]] || fail "$label: HTTP $status: $(cat "$STATE/body")"
    [[ $(header X-Sandbox-Outcome) == "$outcome" ]] ||
        fail "$label: outcome $(header X-Sandbox-Outcome), expected $outcome: $(cat "$STATE/body")"
    output | grep -qF -- "$text" || fail "$label: output lacks '$text': $(output)"
    note_time "$label" "$(awk -v s="$secs" 'BEGIN { printf "%.3f", s }')"
    check "$label: HTTP 200, $outcome, $(output | head -c 80 | tr '\n' '|')"
}

suffix=$(date +%s)-$$
R1="smoke-shell-$suffix"
R2="smoke-read-$suffix"
expect_call "shell echo, new rollout (cold)" ok "hello from the sandbox" \
    shell "$R1" call_1 '{"command": "echo hello from the sandbox; id -un; pwd"}'
expect_call "shell echo, same rollout" ok "second call" \
    shell "$R1" call_2 '{"command": "echo second call > notes.txt; cat notes.txt"}'
expect_call "read_file, new rollout (cold)" ok "Debian GNU/Linux" \
    read_file "$R2" call_1 '{"path": "/etc/os-release", "start_line": 1, "end_line": 2}'
expect_call "read_file of a missing file" model_error "no such file" \
    read_file "$R2" call_2 '{"path": "missing.txt"}'

# The sandboxes: one per rollout, labelled with this instance, without any network.
for rollout in "$R1" "$R2"; do
    id=$(docker ps -q --filter "label=sandbox.instance=$INSTANCE" --filter "label=sandbox.rollout_id=$rollout")
    [[ -n $id ]] || fail "no running sandbox container for $rollout"
    mode=$(docker inspect -f '{{.HostConfig.NetworkMode}}' "$id")
    [[ $mode == none ]] || fail "sandbox of $rollout has network mode $mode"
done
check "one sandbox container per rollout, network mode none"

# ------------------------------------------------------------ persistence ----
# Redis keeps its append-only file on a volume: a restart keeps the rollout and its calls.
t=$(now)
"${compose[@]}" restart redis >/dev/null 2>&1
wait_for 60 curl -fsS -o /dev/null "$API/readyz" || fail "not ready again after the Redis restart"
note_time "Redis restart until ready again" "$(since "$t")"
expect_call "shell on the rollout after restart" ok "second call" \
    shell "$R1" call_3 '{"command": "cat notes.txt"}'
calls=$(curl -fsS -H "Authorization: Bearer $TOKEN" "$API/v1/rollouts/$R1/trajectory" |
    python3 -c 'import json, sys; print(len(json.load(sys.stdin)["calls"]))')
[[ $calls == 3 ]] || fail "trajectory of $R1 has $calls calls after the Redis restart, expected 3"
check "Redis restart: rollout $R1 kept its container and its 3 recorded calls"

# ------------------------------------------------------------- Prometheus ----
targets_up() {
    curl -fsS "$PROMETHEUS/api/v1/targets?state=active" | python3 -c 'import json, sys
up = {t["labels"]["job"] for t in json.load(sys.stdin)["data"]["activeTargets"] if t["health"] == "up"}
sys.exit(0 if {"sandbox-api", "sandbox-worker"} <= up else 1)'
}
query() { # PromQL -> first value or empty
    curl -fsS --get --data-urlencode "query=$1" "$PROMETHEUS/api/v1/query" |
        python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
OK_CALLS='sum(sandbox_tool_calls_total{outcome="ok"})'
calls_seen() { # the 4 ok calls made above, scraped
    local value
    value=$(query "$OK_CALLS")
    [[ -n $value ]] && awk -v v="$value" 'BEGIN { exit !(v >= 4) }'
}
t=$(now)
wait_for 60 targets_up || fail "Prometheus does not show sandbox-api and sandbox-worker up: $(curl -sS "$PROMETHEUS/api/v1/targets")"
check "Prometheus: targets sandbox-api (127.0.0.1:18000) and sandbox-worker (127.0.0.1:19101) up"
wait_for 60 calls_seen || fail "Prometheus has not scraped the 4 ok tool calls"
check "Prometheus: $OK_CALLS = $(query "$OK_CALLS")"
rules=$(curl -fsS "$PROMETHEUS/api/v1/rules" | python3 -c 'import json, sys; print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))')
((rules > 0)) || fail "Prometheus loaded no rules from monitoring/rules"
check "Prometheus: $rules recording and alerting rules loaded from monitoring/rules"
note_time "Prometheus shows targets and calls" "$(since "$t")"

# --------------------------------------------------------------- release ----
for rollout in "$R1" "$R2"; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE -H "Authorization: Bearer $TOKEN" "$API/v1/rollouts/$rollout")
    [[ $code == 2* ]] || fail "DELETE /v1/rollouts/$rollout: HTTP $code"
done
check "rollouts released"

log "timings:"
printf '  %s\n' "${timings[@]}"
log "smoke test passed"
