"""A bounded, expiring cache of earlier answers, keyed by what makes a request the same.

Entries are evicted least-recently-used beyond ``max_entries`` and ignored after
``max_age_s``. The key is a digest of the fields the policy names (or the whole body
but ``stream``), the trusted headers it names, the virtual model, and the tenant
unless the cache is shared. Pure: ``now`` comes from the caller.
"""

import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.domain.ids import ModelName, TenantId
from sidecar.domain.policy import AnswerCacheSpec

_NEVER_IN_KEY = frozenset({"stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An earlier answer: the assistant's text, the model that wrote it, and when.

    Answers of JSON services, and those the cost cache serves again, are kept whole
    instead: ``raw`` is the body as the client got it. ``cost_usd`` is what the answer
    cost when a model wrote it (None: not priced).
    """

    text: str
    model: str
    stored_at: float
    raw: bytes = b""
    cost_usd: float | None = None


def cache_key(
    spec: AnswerCacheSpec,
    tenant: TenantId,
    model: ModelName,
    body: Mapping[str, Any],
    headers: Mapping[str, str],
) -> str:
    """The digest under which answers to this request are stored (degradation cache)."""
    if spec.key_fields:
        fields = {name: body.get(name) for name in spec.key_fields}
    else:
        fields = _whole_request(body)
    key_headers = {name: headers.get(name) for name in spec.key_headers}
    return request_digest("" if spec.shared else tenant, model, fields, key_headers)


def exact_key(scope: str, model: ModelName, body: Mapping[str, Any]) -> str:
    """The digest of the whole request (but ``stream``) in ``scope`` (cost cache)."""
    return request_digest(scope, model, _whole_request(body), {})


def request_digest(
    scope: str, model: ModelName, fields: Mapping[str, Any], headers: Mapping[str, Any]
) -> str:
    """SHA-256 of the scope, the virtual model, and the request fields and headers."""
    material = {
        "scope": scope,
        "model": model,
        "fields": {name: value for name, value in fields.items() if name != "model"},
        "headers": headers,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _whole_request(body: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in _NEVER_IN_KEY}


class AnswerCache:
    """Answers by key, bounded in count and age."""

    def __init__(self, max_entries: int, max_age_s: float) -> None:
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._max_entries = max_entries
        self._max_age_s = max_age_s
        self.hits = 0
        self.misses = 0
        self.saved_usd = 0.0
        """What the answers served again had cost (the money a hit saves)."""

    def get(self, key: str, now: float) -> CachedAnswer | None:
        """The answer under ``key`` if it is young enough; counts a hit or a miss."""
        answer = self._entries.get(key)
        if answer is None or now - answer.stored_at > self._max_age_s:
            if answer is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        self.saved_usd += answer.cost_usd or 0.0
        return answer

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Keep ``answer``, dropping the least recently used beyond the bound."""
        self._entries[key] = answer
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
