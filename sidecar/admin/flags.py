"""Admin calls that steer routing: feature flags, and canary weights.

``POST /flags/{name}`` takes ``{"on": true, "actor": "who", "reason": "why"}``.
``POST /alerts/alertmanager`` takes Alertmanager's webhook payload: every alert with an
``ai_sidecar_flag`` label switches that flag on while it fires and off when it is
resolved (or the other way round when its ``ai_sidecar_flag_state`` label is ``off``).
``POST /breakers/{cluster}`` takes ``{"state": "open" | "closed" | "auto", "actor": ...,
"reason": ...}``: hold a breaker, or let it judge again.
``POST /canaries/{tier}/{model}`` takes ``{"weight_percent": 10, "actor": ..., "reason":
...}``: how an operator sets a canary's share, or puts a rolled-back one back.
All need the admin bearer token. A request that is malformed, names an unknown flag
or would set a flag to no clear state changes nothing and gets a 4xx that says why;
otherwise every change is applied, logged with who and why, and counted in metrics.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

FLAG_LABEL = "ai_sidecar_flag"
STATE_LABEL = "ai_sidecar_flag_state"
MAX_TEXT = 500


class FlagControl(Protocol):
    """Reads and switches the running policy's flags."""

    def snapshot(self) -> Mapping[str, Any]: ...

    def names(self) -> frozenset[str]: ...

    def set(self, name: str, on: bool, actor: str, reason: str, source: str) -> None: ...

    def set_canary(
        self, tier: str, model: str, weight_percent: float, actor: str, reason: str
    ) -> None: ...

    def canaries(self) -> Mapping[str, Any]: ...

    def clusters(self) -> frozenset[str]: ...

    def force_breaker(self, cluster: str, state: str, actor: str, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Switch:
    """One flag change asked for."""

    flag: str
    on: bool
    actor: str
    reason: str


class BadCallError(ValueError):
    """The call cannot be carried out as sent; the message says why."""


def _call_object(payload: Any, field: str, example: str) -> dict[str, Any]:
    """``payload`` if it is an object of ``field``, ``actor`` and ``reason`` only."""
    if not isinstance(payload, dict):
        raise BadCallError(
            f'send a JSON object: {{"{field}": {example}, "actor": "...", "reason": "..."}}'
        )
    unknown = sorted(set(payload) - {field, "actor", "reason"})
    if unknown:
        raise BadCallError(f"unknown field(s): {', '.join(unknown)}")
    return payload


def parse_flag_call(name: str, payload: Any) -> Switch:
    """The switch ``POST /flags/{name}`` asks for, or :class:`BadCallError`."""
    on = _call_object(payload, "on", "true").get("on")
    if not isinstance(on, bool):
        raise BadCallError("'on' must be true or false")
    return Switch(name, on, _text(payload, "actor"), _text(payload, "reason"))


@dataclass(frozen=True, slots=True)
class Weight:
    """A canary weight asked for."""

    weight_percent: float
    actor: str
    reason: str


def parse_weight_call(payload: Any) -> Weight:
    """The weight ``POST /canaries/{tier}/{model}`` asks for, or :class:`BadCallError`."""
    weight = _call_object(payload, "weight_percent", "10").get("weight_percent")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 100:
        raise BadCallError("'weight_percent' must be a number from 0 to 100")
    return Weight(float(weight), _text(payload, "actor"), _text(payload, "reason"))


@dataclass(frozen=True, slots=True)
class Hold:
    """A breaker state asked for: open, closed, or auto (the breaker judges again)."""

    state: str
    actor: str
    reason: str


def parse_breaker_call(payload: Any) -> Hold:
    """The hold ``POST /breakers/{cluster}`` asks for, or :class:`BadCallError`."""
    state = _call_object(payload, "state", '"open"').get("state")
    if state not in ("open", "closed", "auto"):
        raise BadCallError("'state' must be open, closed or auto")
    return Hold(state, _text(payload, "actor"), _text(payload, "reason"))


def parse_alertmanager(payload: Any) -> list[Switch]:
    """The switches an Alertmanager webhook payload asks for, or :class:`BadCallError`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise BadCallError("expected Alertmanager's webhook payload: an object with 'alerts'")
    receiver = payload.get("receiver")
    receiver = receiver if isinstance(receiver, str) else ""
    switches = []
    for position, alert in enumerate(payload["alerts"]):
        switch = _alert_switch(alert, position, receiver)
        if switch is not None:
            switches.append(switch)
    return switches


def _alert_switch(alert: Any, position: int, receiver: str) -> Switch | None:
    where = f"alerts[{position}]"
    if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
        raise BadCallError(f"{where}: expected an object with 'labels'")
    labels = alert["labels"]
    flag = labels.get(FLAG_LABEL)
    if flag is None:
        return None
    status = alert.get("status")
    if not isinstance(flag, str):
        raise BadCallError(f"{where}: label {FLAG_LABEL} must be a flag name (text)")
    if status not in ("firing", "resolved"):
        raise BadCallError(f"{where}: 'status' must be firing or resolved, not {status!r}")
    firing_state = labels.get(STATE_LABEL, "on")
    if firing_state not in ("on", "off"):
        raise BadCallError(f"{where}: label {STATE_LABEL} must be 'on' or 'off'")
    on = (status == "firing") == (firing_state == "on")
    alertname = str(labels.get("alertname", "alert"))
    annotations = alert.get("annotations")
    summary = annotations.get("summary") if isinstance(annotations, dict) else None
    summary = summary if isinstance(summary, str) else ""
    actor = f"alertmanager/{receiver}" if receiver else "alertmanager"
    reason = f"{alertname} {status}" + (f": {summary}" if summary else "")
    return Switch(flag, on, actor[:MAX_TEXT], reason[:MAX_TEXT])


def _text(payload: Mapping[str, Any], field: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadCallError(f"'{field}' must say {'who' if field == 'actor' else 'why'} (text)")
    if len(value) > MAX_TEXT:
        raise BadCallError(f"'{field}' is longer than {MAX_TEXT} characters")
    return value.strip()


def apply(control: FlagControl, switches: list[Switch], source: str) -> None:
    """Apply every switch, after checking that each names a flag (else none is applied)."""
    unknown = sorted({s.flag for s in switches} - control.names())
    if unknown:
        known = ", ".join(sorted(control.names())) or "none defined"
        raise LookupError(f"unknown flag(s): {', '.join(unknown)} (known: {known})")
    for switch in switches:
        control.set(switch.flag, switch.on, switch.actor, switch.reason, source)
