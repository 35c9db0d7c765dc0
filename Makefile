# The two commands of the README: `make up` runs the service, `make test` runs the tests.
# Both install and start what they need on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
VENV := .venv/bin

.PHONY: up down test unit integration lint deps image monitoring-test bench bench-hosts chaos compose-images compose-smoke

up:
	@bash deploy/up.sh

down:
	@bash deploy/down.sh

deps:
	@bash deploy/install.sh && bash deploy/deps.sh && bash images/build.sh && bash k8s/install-tools.sh && bash images/build-all.sh

image:
	@bash images/build.sh

test: deps monitoring-test
	$(VENV)/pytest -q -ra

# promtool checks and rule unit tests, the dashboard kept in step with its generator.
# Installs Debian's prometheus package (promtool, and the server the proof test uses).
monitoring-test: deps
	@bash monitoring/test.sh

# The burst benchmark against the `make up` stack; writes docs/benchmarks.{md,json}. With 500 idle
# live rollouts on the host it also measures httpx calls, CPU per call and idle cost by process.
# Quicker: make bench ARGS="--only loaded --live 50 --sustained-seconds 10" (keeps the other figures).
bench: up
	$(VENV)/python -m tools.bench burst $(ARGS)

# One sandbox host against two in the same run (a second dockerd of its own), and a host
# stopped under live rollouts; writes docs/scaling.json. Stops nothing it did not start.
bench-hosts: deps
	$(VENV)/python -m tools.bench_hosts

# A fault for a drill against the `make up` stack (docs/runbook.md), e.g.
# make chaos FAULT=remove-container ARGS="--rollout x"; FAULT is remove-container,
# engine-restart, kill-worker or redis-outage.
chaos:
	$(VENV)/python -m tools.chaos $(FAULT) $(ARGS)

unit:
	$(VENV)/pytest -q tests/unit

integration: deps
	$(VENV)/pytest -q -ra tests/contract tests/integration

lint:
	$(VENV)/ruff check sandbox tests tools k8s client
	$(VENV)/ruff format --check sandbox tests tools k8s client
	$(VENV)/mypy sandbox

# Docker Compose: build the service, Redis and Prometheus images locally (no registry), and
# a smoke run that brings the stack up on other ports, makes real calls and takes it down.
compose-images: deps
	@bash deploy/compose/build-images.sh

compose-smoke: deps
	@bash deploy/compose/smoke.sh

# Every image the Kubernetes manifests and the Compose files run, built locally under the names
# in images/tags.env (no registry): sandbox, service, bundle, dind, Redis, Prometheus, and the
# sandbox variants tests/integration/test_any_image.py runs on (no python3; busybox alone). `make
# deps`, so `make test`, runs it too (2-3 s when every image is up to date; a few minutes from scratch).
.PHONY: images pod-smoke
images:
	@bash images/build-all.sh

# The worker pod of the rendered dev overlay (OVERLAY=prod for prod's), run on the local engine
# as the kubelet would run it, with Redis, API and beat pods, serving real tool calls; removes
# all it created. tests/integration/test_worker_pod.py runs it in `make test`.
OVERLAY ?= dev
pod-smoke: deps
	$(VENV)/python k8s/podsmoke.py --overlay $(OVERLAY)

# Faults under load against the `make up` stack (not in CI: it restarts the engine and Redis):
# 64 rollouts calling while the chaos drills run, then every answer, trajectory, container and
# metric checked against what the client saw; writes docs/soak.json (docs/benchmarks.md).
.PHONY: soak
soak: up
	$(VENV)/python -m tools.soak
