"""Feature flags through the real Envoy: switched by an operator or by an alert, they
change where the very next request goes; bad or unauthorized calls change nothing.
"""

from typing import Any

import pytest

from sidecar_demo.stack import DEMO_CREDENTIALS
from tests.e2e.conftest import SIDECAR_ADMIN_URL, Harness

pytestmark = pytest.mark.e2e

TOKEN = {"authorization": f"Bearer {DEMO_CREDENTIALS['AI_SIDECAR_ADMIN_TOKEN']}"}


async def served_by(harness: Harness) -> tuple[str, str]:
    """The model that answered a paid chat request, and the rung header."""
    response = await harness.chat("sk-demo-paid")
    assert response.status == 200
    return (await response.json())["model"], response.headers["x-ai-sidecar-rung"]


async def switch(harness: Harness, flag: str, payload: Any, headers: Any = TOKEN) -> Any:
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/flags/{flag}", json=payload, headers=headers
    ) as response:
        return response.status, await response.json()


async def alert(harness: Harness, status: str, flag: str) -> int:
    payload = {
        "version": "4",
        "status": status,
        "receiver": "sidecar",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "PremiumErrorBudgetBurn", "ai_sidecar_flag": flag},
                "annotations": {"summary": "premium cluster burning its error budget"},
            }
        ],
    }
    async with harness.http.post(
        f"{SIDECAR_ADMIN_URL}/alerts/alertmanager", json=payload, headers=TOKEN
    ) as response:
        return response.status


async def flags(harness: Harness) -> dict[str, Any]:
    state: dict[str, Any] = (await harness.sidecar_state())["flags"]
    return state


async def test_a_kill_switch_moves_the_next_request_and_back(fresh: Harness) -> None:
    assert await served_by(fresh) == ("gpt-4o", "primary")
    status, answer = await switch(
        fresh,
        "kill-openai-premium",
        {"on": True, "actor": "oncall@example.com", "reason": "provider incident"},
    )
    assert status == 200
    assert answer["flags"]["kill-openai-premium"]["on"] is True
    assert await served_by(fresh) == ("gpt-4o-mini", "fallback")
    change = (await flags(fresh))["kill-openai-premium"]["last_change"]
    assert (change["actor"], change["reason"], change["source"]) == (
        "oncall@example.com",
        "provider incident",
        "api",
    )
    async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
        metrics = await response.text()
    assert 'ai_sidecar_flag_on{flag="kill-openai-premium"} 1.0' in metrics
    assert (
        'ai_sidecar_flag_changes_total{flag="kill-openai-premium",source="api",state="on"} 1.0'
        in metrics
    )
    status, _ = await switch(
        fresh, "kill-openai-premium", {"on": False, "actor": "oncall", "reason": "resolved"}
    )
    assert status == 200
    assert await served_by(fresh) == ("gpt-4o", "primary")


async def test_an_alert_turns_degraded_mode_on_while_it_fires(fresh: Harness) -> None:
    assert await alert(fresh, "firing", "degraded-mode") == 200
    assert await served_by(fresh) == ("gpt-4o-mini", "fallback")
    change = (await flags(fresh))["degraded-mode"]["last_change"]
    assert change["actor"] == "alertmanager/sidecar"
    assert change["reason"].startswith("PremiumErrorBudgetBurn firing")
    assert await alert(fresh, "resolved", "degraded-mode") == 200
    assert await served_by(fresh) == ("gpt-4o", "primary")


@pytest.mark.parametrize(
    ("flag", "payload", "headers", "status", "message"),
    [
        ("kill-openai-premium", {"on": True, "actor": "a", "reason": "b"}, {}, 401, "token"),
        (
            "kill-openai-premium",
            {"on": True, "actor": "a", "reason": "b"},
            {"authorization": "Bearer wrong"},
            401,
            "token",
        ),
        ("kill-openai-premium", {"on": "yes", "actor": "a", "reason": "b"}, TOKEN, 400, "'on'"),
        ("kill-openai-premium", {"on": True, "reason": "b"}, TOKEN, 400, "'actor'"),
        ("kill-openai-premium", {"on": True, "actor": "a"}, TOKEN, 400, "'reason'"),
        ("kill-openai-premium", [1], TOKEN, 400, "JSON object"),
        ("no-such-flag", {"on": True, "actor": "a", "reason": "b"}, TOKEN, 404, "unknown flag"),
    ],
)
async def test_bad_flag_calls_are_refused_and_change_nothing(
    harness: Harness, flag: str, payload: Any, headers: Any, status: int, message: str
) -> None:
    got, answer = await switch(harness, flag, payload, headers)
    assert got == status
    assert message in answer["error"]
    assert (await flags(harness))["kill-openai-premium"]["on"] is False
    assert await served_by(harness) == ("gpt-4o", "primary")


async def test_an_alert_for_an_unknown_flag_changes_nothing(harness: Harness) -> None:
    assert await alert(harness, "firing", "no-such-flag") == 422
    assert not any(state["on"] for state in (await flags(harness)).values())


async def test_an_operator_holds_a_breaker_open_then_lets_it_judge_again(fresh: Harness) -> None:
    url = f"{SIDECAR_ADMIN_URL}/breakers/openai-premium"
    hold = {"state": "open", "actor": "oncall", "reason": "provider maintenance"}
    async with fresh.http.post(url, json=hold, headers=TOKEN) as response:
        assert response.status == 200
    assert await served_by(fresh) == ("gpt-4o-mini", "fallback")
    premium = (await fresh.sidecar_state())["clusters"]["openai-premium"]
    assert (premium["breaker"], premium["forced"]) == ("open", "open")
    assert "provider maintenance" in premium["reason"]
    release = {"state": "auto", "actor": "oncall", "reason": "maintenance over"}
    async with fresh.http.post(url, json=release, headers=TOKEN) as response:
        assert response.status == 200
    assert await served_by(fresh) == ("gpt-4o", "primary")
    async with fresh.http.post(
        f"{SIDECAR_ADMIN_URL}/breakers/no-such-cluster", json=hold, headers=TOKEN
    ) as response:
        assert response.status == 404
    async with fresh.http.post(url, json={**hold, "state": "ajar"}, headers=TOKEN) as response:
        assert response.status == 400


async def test_every_change_through_the_admin_api_is_counted(fresh: Harness) -> None:
    switch_on = {"on": True, "actor": "oncall", "reason": "count me"}
    assert (await switch(fresh, "chat-to-fallback", switch_on))[0] == 200
    assert (await switch(fresh, "chat-to-fallback", switch_on, headers={}))[0] == 401
    async with fresh.http.post(f"{SIDECAR_ADMIN_URL}/reload") as response:
        assert response.status == 401, "reloading needs the token too"
    async with fresh.http.get(f"{SIDECAR_ADMIN_URL}/metrics") as response:
        metrics = await response.text()
    assert 'ai_sidecar_admin_changes_total{kind="flags"} 1.0' in metrics
    assert 'kind="reload"' not in metrics
