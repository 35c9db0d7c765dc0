#!/usr/bin/env bash
# `make up`: install what is missing, start Redis and the Docker engine, build the sandbox
# image, then start a Celery worker (with beat) and the API on 127.0.0.1:8000.
# Idempotent: what already runs is reused; only what this script started is recorded in
# .run/*.pid, and `make down` stops exactly that.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"
started=$(date +%s)

bash "$ROOT/deploy/install.sh"
bash "$ROOT/deploy/deps.sh"
bash "$ROOT/images/build.sh"

mkdir -p "$ROOT/.run"
# A token: the caller's, else the one generated on a previous run, else a new one.
if [[ -z "${SANDBOX_API_TOKENS:-}" ]]; then
  if [[ ! -s "$ROOT/.run/api-token" ]]; then
    (umask 077; "$ROOT/.venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$ROOT/.run/api-token")
  fi
  SANDBOX_API_TOKENS="$(cat "$ROOT/.run/api-token")"
fi
export SANDBOX_API_TOKENS
# Environments may take workspaces only from these host directories (comma-separated).
export SANDBOX_WORKSPACE_ROOTS="${SANDBOX_WORKSPACE_ROOTS:-$ROOT/workspaces}"
# Ended rollouts go to the archive, so Redis holds live state only (sandbox/store/archive.py).
export SANDBOX_ARCHIVE__DIR="${SANDBOX_ARCHIVE__DIR:-$ROOT/.run/archive}"
mkdir -p "$ROOT/workspaces"
# Environments declared in a YAML file are registered when the API starts.
if [[ -z "${SANDBOX_ENVIRONMENTS_FILE:-}" && -f "$ROOT/environments.yaml" ]]; then
  export SANDBOX_ENVIRONMENTS_FILE="$ROOT/environments.yaml"
fi
TOKEN="${SANDBOX_API_TOKENS%%,*}"
PORT="${SANDBOX_API_PORT:-8000}"

start_daemon() {  # name, command...
  local name="$1"; shift
  local pidfile="$ROOT/.run/$name.pid"
  if pid_alive "$pidfile"; then
    log "$name already running (pid $(cat "$pidfile"))"
    return
  fi
  log "starting $name (log: .run/$name.log)"
  # The process writes its own pid, then becomes the service (exec): the pidfile names the
  # service itself, not a wrapper, so `make down` stops exactly it.
  # The subshell execs straight into it, so no waiting shell lingers holding our stdout.
  (
    cd "$ROOT" || exit 1
    exec setsid nohup bash -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" >>"$ROOT/.run/$name.log" 2>&1 </dev/null
  ) &
  wait_for 10 test -s "$pidfile" || die "$name did not start; see .run/$name.log"
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! pid_alive "$ROOT/.run/api.pid" && port_taken "$PORT"; then
  die "port $PORT on 127.0.0.1 is in use by a process make up did not start; stop it or set SANDBOX_API_PORT"
fi

start_daemon worker "$ROOT/.venv/bin/sandbox" worker --beat --beat-schedule "$ROOT/.run/celerybeat-schedule"
start_daemon api "$ROOT/.venv/bin/sandbox" api --port "$PORT"

log "waiting for the API to be ready"
if ! wait_for 90 curl -fsS -o /dev/null "http://127.0.0.1:$PORT/readyz"; then
  log "the API did not become ready; last lines of the logs:"
  tail -n 20 "$ROOT/.run/api.log" "$ROOT/.run/worker.log" >&2 || true
  curl -sS "http://127.0.0.1:$PORT/readyz" >&2 || true
  exit 1
fi
for name in api worker; do
  pid_alive "$ROOT/.run/$name.pid" || die "$name exited during start-up; see .run/$name.log"
done
log "ready in $(( $(date +%s) - started )) s"

cat <<MSG

The rollout sandbox service runs on http://127.0.0.1:$PORT
API token: $TOKEN

Try a tool call (a new rollout gets its own container on its first call):

curl -sS http://127.0.0.1:$PORT/v1/tools/shell \\
  -H 'Authorization: Bearer $TOKEN' -H 'Content-Type: application/json' \\
  -d '{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell", "arguments": "{\\"command\\": \\"uname -a; id; ls -la\\"}", "trace_id": "demo-rollout-1"}'

Then: curl -sS -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:$PORT/v1/rollouts/demo-rollout-1/trajectory
Workspaces for environments may come from: $SANDBOX_WORKSPACE_ROOTS
Stop with: make down
MSG
