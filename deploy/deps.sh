#!/usr/bin/env bash
# Make sure Redis and the Docker engine are running. Anything already running
# is reused as is; what this script starts itself gets a pidfile in .run/, so
# the stop script stops exactly that and never a daemon someone else owns.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ROOT="$(root_dir)"
RUN="$ROOT/.run"
REDIS_PORT="${SANDBOX_REDIS_PORT:-6379}"
mkdir -p "$RUN"
take_lock deps

for tool in redis-cli redis-server docker dockerd; do
    command -v "$tool" >/dev/null || die "$tool not found; run deploy/install.sh first"
done

# A pidfile whose process is gone is removed: the stop script would otherwise
# signal whatever process reuses that pid later.
drop_stale_pidfile() {
    if [[ -e $1 ]] && ! pid_alive "$1"; then
        log "removing stale pidfile $1"
        rm -f "$1"
    fi
}

# ---------------------------------------------------------------- Redis ----
redis_up() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

drop_stale_pidfile "$RUN/redis.pid"
if redis_up; then
    # Ours from an earlier run (pidfile kept) or a system one (nothing recorded).
    log "redis: reusing the server answering on 127.0.0.1:$REDIS_PORT"
elif pid_alive "$RUN/redis.pid"; then
    # Ours but not answering yet, e.g. still replaying a large AOF.
    log "redis: our server is starting; waiting for it"
    wait_for 60 redis_up || die "redis (pid $(cat "$RUN/redis.pid")) does not answer; see $RUN/redis.log"
else
    log "redis: starting redis-server on 127.0.0.1:$REDIS_PORT (data in $RUN/redis)"
    mkdir -p "$RUN/redis"
    # Persistence through the append-only file only (no RDB snapshots), so the
    # sandbox registry survives a restart without periodic full dumps. A memory cap without
    # eviction: past it writes fail (the service answers store_unavailable, an infra 503)
    # instead of Redis silently dropping live state; the archive keeps it far below.
    # 9>&-: the daemon must not inherit our lock fd, or it would hold the
    # lock for its whole life and block every later run of this script.
    redis-server \
        --bind 127.0.0.1 --port "$REDIS_PORT" \
        --daemonize yes \
        --dir "$RUN/redis" \
        --pidfile "$RUN/redis.pid" \
        --logfile "$RUN/redis.log" \
        --appendonly yes --save "" \
        --maxmemory "${SANDBOX_REDIS_MAXMEMORY:-4gb}" --maxmemory-policy noeviction 9>&-
    wait_for 30 redis_up || {
        tail -n 20 "$RUN/redis.log" >&2 || true
        die "redis did not answer within 30 s; see $RUN/redis.log"
    }
    log "redis: up (pid $(cat "$RUN/redis.pid"))"
fi

# --------------------------------------------------------------- Docker ----
docker_up() { docker info >/dev/null 2>&1; }

# The engine's configuration: gVisor's runsc as a second runtime when it is installed.
# runsc runs with no network (sandboxes have none), the ptrace platform (no KVM needed), and
# --host-uds=create so the guest's socket in its bind mount is reachable from the host.
ENGINE_CONFIG="$RUN/dockerd.json"
if [[ -x /usr/bin/runsc ]]; then
    echo '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs":' \
        '["--network=none", "--platform=ptrace", "--host-uds=create"]}}}' >"$ENGINE_CONFIG.tmp"
else
    echo '{}' >"$ENGINE_CONFIG.tmp"
fi
mv -f "$ENGINE_CONFIG.tmp" "$ENGINE_CONFIG"
engine_lacks_runsc() { [[ -x /usr/bin/runsc ]] && ! docker info --format '{{json .Runtimes}}' | grep -q '"runsc"'; }

# Give up waiting as soon as the daemon we started has exited.
docker_up_or_gone() { docker_up || ! kill -0 "$1" 2>/dev/null; }

drop_stale_pidfile "$RUN/dockerd.pid"
if docker_up && engine_lacks_runsc && pid_alive "$RUN/dockerd.pid"; then
    # Ours, started before runsc was part of its configuration: a runtime is only read at
    # start-up, so restart it once. Its running sandboxes stop; the reconciler ends their
    # rollouts `lost` (infra, never the model's).
    old_pid=$(cat "$RUN/dockerd.pid")
    log "docker: our engine (pid $old_pid) does not offer runsc yet; restarting it with $ENGINE_CONFIG"
    kill "$old_pid"
    wait_for 60 bash -c "! kill -0 $old_pid 2>/dev/null" || die "dockerd (pid $old_pid) did not stop within 60 s"
fi
if docker_up; then
    log "docker: reusing the running engine"
    if engine_lacks_runsc; then
        log "docker: this engine does not offer runsc, so environments with runtime runsc are refused;" \
            "to offer it, add the runtimes of $ENGINE_CONFIG to its daemon.json and reload it"
    fi
elif [[ -n ${DOCKER_HOST:-} && $DOCKER_HOST != unix:///var/run/docker.sock ]]; then
    # A local dockerd would listen on the default socket, not on DOCKER_HOST,
    # so starting one cannot fix this.
    die "docker: DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local engine"
elif pid_alive "$RUN/dockerd.pid"; then
    log "docker: our engine is starting; waiting for it"
    wait_for 60 docker_up || die "dockerd (pid $(cat "$RUN/dockerd.pid")) does not answer; see $RUN/dockerd.log"
elif pid_alive /var/run/docker.pid; then
    # A system dockerd (init script) is coming up; a second engine on the same
    # /var/lib/docker would fail on its lock, so wait for that one instead.
    log "docker: a system engine (pid $(cat /var/run/docker.pid)) is starting; waiting for it"
    wait_for 60 docker_up || die "the system dockerd does not answer; not starting a second one"
else
    # A pidfile left by a crashed system daemon makes its init script refuse to
    # start later; clear it now that we know that pid is dead.
    drop_stale_pidfile /var/run/docker.pid
    log "docker: starting dockerd (log: $RUN/dockerd.log)"
    # --bridge=none: sandboxes run with --network none or host, and it avoids
    # needing a docker0 bridge/NAT. setsid+nohup detach the daemon from this
    # shell, so it keeps running after the script (and its terminal) exits.
    # Like redis, it must not inherit the lock fd (9).
    setsid nohup dockerd --bridge=none --config-file "$ENGINE_CONFIG" --pidfile "$RUN/dockerd.pid" \
        >>"$RUN/dockerd.log" 2>&1 </dev/null 9>&- &
    dockerd_pid=$!
    if ! wait_for 60 docker_up_or_gone "$dockerd_pid" || ! docker_up; then
        tail -n 20 "$RUN/dockerd.log" >&2 || true
        kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited during startup; see $RUN/dockerd.log"
        die "dockerd did not answer within 60 s; see $RUN/dockerd.log"
    fi
    log "docker: up (pid $(cat "$RUN/dockerd.pid"))"
fi

# The guest every sandbox runs (a static Go binary, bind-mounted into any image): built
# offline here, so `make up`, `make test` and the image builds all find it; seconds when
# up to date.
bash "$ROOT/sandbox/guest/native/build.sh"

log "deps ready: redis 127.0.0.1:$REDIS_PORT, docker $(docker version --format '{{.Server.Version}}')"
