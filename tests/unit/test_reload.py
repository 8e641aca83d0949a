"""Hot reload: a valid file is swapped in with live state carried over; anything else is
refused and the running policy stays."""

from pathlib import Path

from sidecar.core.breaker import CallResult
from sidecar.core.clock import FakeClock
from sidecar.core.router import ActivePolicy
from sidecar.domain.ids import ClusterName
from sidecar.engine.reload import PolicyReloader, RuntimeHolder
from sidecar.engine.runtime import RoutingRuntime
from sidecar.policy.loader import load_policy, resolve_credentials
from tests.conftest import DEMO_CREDENTIALS, DEMO_POLICY, ENVOY_CONFIG

PREMIUM = ClusterName("openai-premium")
CHEAP = ClusterName("openai-cheap")


def holder_for(path: Path) -> RuntimeHolder:
    policy = load_policy(path)
    active = ActivePolicy(policy, resolve_credentials(policy, DEMO_CREDENTIALS, str(path)))
    return RuntimeHolder(RoutingRuntime(active, FakeClock()))


def setup(tmp_path: Path) -> tuple[Path, RuntimeHolder, PolicyReloader]:
    path = tmp_path / "policy.yaml"
    path.write_text(DEMO_POLICY.read_text())
    holder = holder_for(path)
    return path, holder, PolicyReloader(path, DEMO_CREDENTIALS, holder)


def test_an_unchanged_file_changes_nothing(tmp_path: Path) -> None:
    _, holder, reloader = setup(tmp_path)
    before = holder.current
    assert reloader.reload("test").result == "unchanged"
    assert holder.current is before


def test_a_new_policy_is_swapped_in_and_live_state_carries_over(tmp_path: Path) -> None:
    path, holder, reloader = setup(tmp_path)
    old = holder.current
    old.set_flag("kill-openai-premium", True, "oncall", "incident")
    permit = old.start_attempt(PREMIUM)
    assert permit is not None
    path.write_text(
        path.read_text().replace(
            "  openai-cheap:\n    provider: openai",
            "  openai-cheap:\n    provider: openai\n    breaker: {open_wait_s: 7}",
        )
    )
    result = reloader.reload("test")
    assert result.result == "applied"
    new = holder.current
    assert new is not old
    assert new.fleet.breakers[PREMIUM] is old.fleet.breakers[PREMIUM]
    assert new.fleet.breakers[CHEAP] is not old.fleet.breakers[CHEAP]  # its settings changed
    assert new.fleet.flags.is_on("kill-openai-premium")
    assert new.accounting is old.accounting
    # A call started under the old policy still counts, and ends in the shared count.
    assert new.fleet.snapshot(0.0)["clusters"][PREMIUM]["in_flight"] == 1
    old.finish_call(permit, CallResult(failed=False, slow=False, detail="ok"))
    assert new.fleet.snapshot(0.0)["clusters"][PREMIUM]["in_flight"] == 0


def test_a_broken_file_is_refused_with_its_problems(tmp_path: Path) -> None:
    path, holder, reloader = setup(tmp_path)
    before = holder.current
    path.write_text(path.read_text().replace("tier: paid\n    team", "tier: gold\n    team"))
    result = reloader.reload("test")
    assert result.result == "refused"
    assert any("unknown tier 'gold'" in problem for problem in result.problems)
    assert holder.current is before


def test_a_missing_file_or_a_changed_store_is_refused(tmp_path: Path) -> None:
    path, holder, reloader = setup(tmp_path)
    before = holder.current
    text = path.read_text()
    path.unlink()
    assert reloader.reload("test").result == "refused"
    path.write_text(
        text.replace("state:\n  store: memory", "state:\n  store: redis\n  redis_url: redis://x")
    )
    result = reloader.reload("test")
    assert result.result == "refused"
    assert "restart the sidecar" in result.problems[0]
    assert holder.current is before


def test_unchanged_flags_are_one_board_for_both_runtimes(tmp_path: Path) -> None:
    path, holder, reloader = setup(tmp_path)
    old = holder.current
    path.write_text(
        path.read_text().replace(
            "max_concurrent: 16\n    max_waiting: 16\n    max_wait_s: 2",
            "max_concurrent: 15\n    max_waiting: 16\n    max_wait_s: 2",
        )
    )
    assert reloader.reload("test").result == "applied"
    old.set_flag("degraded-mode", True, "slo/chat", "a request that began before the reload")
    assert holder.current.fleet.flags.is_on("degraded-mode")


def test_a_policy_envoy_cannot_serve_is_refused_when_the_envoy_config_is_known(
    tmp_path: Path,
) -> None:
    path, holder, _ = setup(tmp_path)
    reloader = PolicyReloader(path, DEMO_CREDENTIALS, holder, ENVOY_CONFIG)
    before = holder.current
    # A chain order no aggregate cluster of envoy/envoy.yaml serves.
    path.write_text(
        path.read_text().replace(
            "chat: {cluster: openai-cheap, fallback: [ollama-local]}",
            "chat: {cluster: ollama-local, fallback: [openai-cheap]}",
        )
    )
    result = reloader.reload("test")
    assert result.result == "refused"
    assert any(
        "no aggregate cluster 'chain--ollama-local--openai-cheap'" in p for p in result.problems
    )
    assert holder.current is before
    assert reloader.last is not None
    assert reloader.last["result"] == "refused"
