#!/usr/bin/env bash
# `make down`: stop exactly the processes `make up` started (their pids are in .run/*.pid),
# in reverse order of dependency. Anything that was already running before is left alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=deploy/lib.sh
source "$ROOT/deploy/lib.sh"

stop_pidfile() {  # name
  local pidfile="$ROOT/.run/$1.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid; pid="$(cat "$pidfile")"
  if pid_alive "$pidfile"; then
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$1 did not stop in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

stop_pidfile api
stop_pidfile worker
if [[ -f "$ROOT/.run/dockerd.pid" ]]; then
  # Sandboxes of this service die with the engine we started; remove them cleanly first.
  ids="$(docker ps -aq --filter label=sandbox.role=rollout 2>/dev/null || true)"
  [[ -n "$ids" ]] && docker rm -f $ids >/dev/null 2>&1 || true
fi
stop_pidfile dockerd
stop_pidfile redis
log "stopped what make up started"
