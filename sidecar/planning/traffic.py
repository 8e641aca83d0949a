"""A traffic mix for planning and simulation, read from YAML.

```yaml
requests_per_month: 10000000
p95_s: {openai-premium: 1.4, openai-cheap: 0.8}   # expected p95 of each cluster
bars: {max_p95_s: 2.0, min_accuracy: 0.85}       # what the fleet must meet
mix:
  - {tier: paid, model: assistant, task: general, share: 0.7,
     prompt_tokens: 500, completion_tokens: 200}
```

Shares must add up to 1. Every problem is reported with the entry it is in.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class TrafficError(ValueError):
    """The traffic file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class MixEntry:
    """One slice of the traffic: who asks which model for which task, and how much."""

    tier: str
    model: str
    task: str
    share: float
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Traffic:
    """Requests per month, their mix, each cluster's expected p95, and the bars."""

    requests_per_month: float
    mix: tuple[MixEntry, ...]
    p95_s: Mapping[str, float]
    max_p95_s: float | None
    min_accuracy: float | None


def load_traffic(path: Path) -> Traffic:
    """Read and check a traffic file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise TrafficError(f"{path}: cannot read: {error}") from None
    if not isinstance(data, dict):
        raise TrafficError(f"{path}: expected a mapping")
    mix = tuple(_entry(path, n, item) for n, item in enumerate(data.get("mix") or []))
    if not mix:
        raise TrafficError(f"{path}: 'mix' needs at least one entry")
    if abs(sum(entry.share for entry in mix) - 1.0) > 1e-6:
        raise TrafficError(f"{path}: the shares of 'mix' add up to {sum(e.share for e in mix):g}")
    bars = data.get("bars") or {}
    monthly = _number(path, "requests_per_month", data.get("requests_per_month"))
    if monthly <= 0:
        raise TrafficError(f"{path}: requests_per_month must be more than 0")
    return Traffic(
        requests_per_month=monthly,
        mix=mix,
        p95_s={
            str(k): _number(path, f"p95_s.{k}", v) for k, v in (data.get("p95_s") or {}).items()
        },
        max_p95_s=_optional(path, "bars.max_p95_s", bars.get("max_p95_s")),
        min_accuracy=_optional(path, "bars.min_accuracy", bars.get("min_accuracy")),
    )


def _entry(path: Path, position: int, item: Any) -> MixEntry:
    where = f"mix[{position}]"
    if not isinstance(item, dict):
        raise TrafficError(f"{path}: {where}: expected a mapping")
    missing = [k for k in ("tier", "model", "share") if k not in item]
    if missing:
        raise TrafficError(f"{path}: {where}: missing {', '.join(missing)}")
    return MixEntry(
        tier=str(item["tier"]),
        model=str(item["model"]),
        task=str(item.get("task", "general")),
        share=_number(path, f"{where}.share", item["share"]),
        prompt_tokens=int(_number(path, f"{where}.prompt_tokens", item.get("prompt_tokens", 500))),
        completion_tokens=int(
            _number(path, f"{where}.completion_tokens", item.get("completion_tokens", 200))
        ),
    )


def _number(path: Path, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TrafficError(f"{path}: {where}: expected a number >= 0, got {value!r}")
    return float(value)


def _optional(path: Path, where: str, value: Any) -> float | None:
    return None if value is None else _number(path, where, value)


def _mapping(data: dict[str, Any], field: str) -> list[tuple[Any, Any]]:
    value = data.get(field) or {}
    return list(value.items()) if isinstance(value, dict) else []
