"""Container runtimes per environment (runc, or runsc for gVisor): an environment asking for one no
host offers is refused at registration, never left to fail provisioning forever."""

from __future__ import annotations

import pytest

from sandbox.domain.calls import ToolCall
from sandbox.domain.environment import EnvironmentSpec
from sandbox.domain.errors import ProvisionFailed, UnsupportedRuntime
from tests.unit.conftest import MakeWorld


def test_runsc_is_refused_while_no_host_offers_it(make_world: MakeWorld) -> None:
    w = make_world()
    w.registry.register("plain", EnvironmentSpec())  # runc: every engine's default, nothing to check
    with pytest.raises(UnsupportedRuntime) as refused:
        w.registry.register("gvisor", EnvironmentSpec(runtime="runsc"))
    assert refused.value.http_status == 400 and "no sandbox host offers it" in refused.value.message
    assert "gvisor" not in w.registry.names()


def test_runsc_environments_run_under_runsc_where_a_host_offers_it(make_world: MakeWorld) -> None:
    w = make_world()
    w.backend.offered_runtimes = ("runc", "runsc")
    w.host.beat()
    w.registry.register("gvisor", EnvironmentSpec(runtime="runsc"))
    for rid, item in (("r-gvisor", {"environment": "gvisor"}), ("r-plain", None)):
        call = w.call(rid)
        assert w.tools.handle(ToolCall(call.tool, rid, call.call_id, "fc", call.arguments, call.arguments, item)).output
    runtime_of = {
        rid: w.backend.containers[w.store.rollouts.get(rid).container_name].spec.runtime
        for rid in ("r-gvisor", "r-plain")
    }  # type: ignore[union-attr]
    assert runtime_of == {"r-gvisor": "runsc", "r-plain": "runc"}


def test_a_host_without_the_runtime_fails_the_provisioning_not_the_engine(make_world: MakeWorld) -> None:
    """Registered while one host offered runsc, served by one that does not: provision_failed (retryable
    elsewhere), never engine_unavailable, which would count towards quarantining a healthy host."""
    w = make_world()
    w.backend.offered_runtimes = ("runc", "runsc")
    w.host.beat()
    w.registry.register("gvisor", EnvironmentSpec(runtime="runsc"))
    w.backend.offered_runtimes = ("runc",)
    call = w.call("r-nowhere")
    with pytest.raises(ProvisionFailed):
        w.tools.handle(
            ToolCall(
                call.tool, "r-nowhere", call.call_id, "fc", call.arguments, call.arguments, {"environment": "gvisor"}
            )
        )
