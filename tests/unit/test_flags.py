"""Feature flags: the board's state and lookups, the admin call parsers, policy checks."""

from typing import Any

import pytest

from sidecar.admin.flags import BadCallError, Switch, parse_alertmanager, parse_flag_call
from sidecar.core.flags import FlagBoard, UnknownFlagError
from sidecar.domain.flags import FlagSpec
from sidecar.domain.ids import ClusterName, ModelName, TierName
from sidecar.policy.loader import parse_policy
from sidecar.policy.problems import PolicyError
from tests.conftest import DEMO_POLICY

KILL = FlagSpec("kill", kill_clusters=frozenset({ClusterName("a")}))
FORCE = FlagSpec("force", on_at_start=True, force_fallback=frozenset({ModelName("chat")}))
DEGRADE = FlagSpec("degrade", downgrade_tiers=frozenset({TierName("free")}))


def board() -> FlagBoard:
    return FlagBoard({spec.name: spec for spec in (KILL, FORCE, DEGRADE)})


def test_flags_start_as_the_policy_says_and_act_only_while_on() -> None:
    flags = board()
    assert flags.killed_by(ClusterName("a")) is None
    assert flags.downgraded_by(TierName("paid"), ModelName("chat")) == "force"
    assert flags.downgraded_by(TierName("free"), ModelName("other")) is None
    flags.set("kill", True, "oncall", "incident", now=100.0)
    flags.set("degrade", True, "oncall", "budget", now=101.0)
    flags.set("force", False, "oncall", "done", now=102.0)
    assert flags.killed_by(ClusterName("a")) == "kill"
    assert flags.killed_by(ClusterName("b")) is None
    assert flags.downgraded_by(TierName("free"), ModelName("other")) == "degrade"
    assert flags.downgraded_by(TierName("paid"), ModelName("chat")) is None


def test_a_change_says_who_why_when_and_what_it_was() -> None:
    flags = board()
    change = flags.set("kill", True, "oncall", "incident", now=100.0, source="webhook")
    assert (change.was_on, change.on, change.actor, change.reason, change.at) == (
        False,
        True,
        "oncall",
        "incident",
        100.0,
    )
    view = flags.snapshot()["kill"]
    assert view["on"] is True
    assert view["last_change"]["source"] == "webhook"
    with pytest.raises(UnknownFlagError):
        flags.set("nope", True, "oncall", "x", now=1.0)


def test_an_operator_call_parses_to_one_switch() -> None:
    switch = parse_flag_call("kill", {"on": True, "actor": " oncall ", "reason": "incident"})
    assert switch == Switch("kill", True, "oncall", "incident")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"on": True, "actor": "a", "reason": "b", "extra": 1}, "unknown field"),
        ({"on": 1, "actor": "a", "reason": "b"}, "'on'"),
        ({"on": True, "actor": "  ", "reason": "b"}, "'actor'"),
        ({"on": True, "actor": "a", "reason": "x" * 501}, "longer than"),
        ("on", "JSON object"),
    ],
)
def test_bad_operator_calls_say_what_is_wrong(payload: Any, message: str) -> None:
    with pytest.raises(BadCallError, match=message):
        parse_flag_call("kill", payload)


def test_an_alertmanager_payload_switches_the_flags_its_alerts_name() -> None:
    payload = {
        "receiver": "sidecar",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "Burn", "ai_sidecar_flag": "degrade"}},
            {"status": "resolved", "labels": {"alertname": "Other"}},
            {
                "status": "resolved",
                "labels": {"ai_sidecar_flag": "kill", "ai_sidecar_flag_state": "off"},
                "annotations": {"summary": "all good"},
            },
        ],
    }
    assert parse_alertmanager(payload) == [
        Switch("degrade", True, "alertmanager/sidecar", "Burn firing"),
        Switch("kill", True, "alertmanager/sidecar", "alert resolved: all good"),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"alerts": "x"},
        {"alerts": [{"status": "firing"}]},
        {"alerts": [{"status": "pending", "labels": {"ai_sidecar_flag": "kill"}}]},
        {
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"ai_sidecar_flag": "kill", "ai_sidecar_flag_state": "maybe"},
                }
            ]
        },
    ],
)
def test_malformed_alertmanager_payloads_are_refused(payload: Any) -> None:
    with pytest.raises(BadCallError):
        parse_alertmanager(payload)


def test_policy_flags_must_name_what_exists_and_do_something() -> None:
    text = DEMO_POLICY.read_text().replace(
        "    kill_clusters: [openai-premium]", "    kill_clusters: [openai-premum]"
    )
    text = text.replace("    force_fallback: [chat]\n", "")
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    problems = [p.render("policy.yaml") for p in caught.value.problems]
    assert any("flags.kill-openai-premium.kill_clusters[0]: unknown cluster" in p for p in problems)
    assert any("flags.chat-to-fallback: this flag does nothing" in p for p in problems)
