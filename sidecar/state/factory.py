"""The counter store a policy asks for: this process's memory, or a guarded shared Redis."""

import asyncio
import logging
from collections.abc import Mapping

from sidecar.domain.accounting import StoreSpec
from sidecar.state.guarded import GuardedStore
from sidecar.state.memory import MemoryStore
from sidecar.state.redis import RedisStore, describe_url
from sidecar.state.store import CounterStore

log = logging.getLogger("sidecar.state")


class StoreConfigError(ValueError):
    """The policy names a Redis URL variable that the environment does not set."""


def redis_url_of(spec: StoreSpec, environ: Mapping[str, str]) -> str | None:
    """The Redis URL the policy gives, directly or through an environment variable."""
    if spec.redis_url is not None:
        return spec.redis_url
    if spec.redis_url_env is None:
        return None
    url = environ.get(spec.redis_url_env, "")
    if not url:
        raise StoreConfigError(
            f"state.redis_url_env names {spec.redis_url_env}, which is not set or empty"
        )
    return url


def describe_store(spec: StoreSpec, environ: Mapping[str, str]) -> str:
    """Which store counts, for the startup log line (never with credentials)."""
    url = redis_url_of(spec, environ)
    if not spec.shared or url is None:
        return "memory (this process only)"
    return f"redis at {describe_url(url)}, namespace {spec.namespace}"


def build_store(spec: StoreSpec, environ: Mapping[str, str]) -> CounterStore:
    """A :class:`MemoryStore`, or Redis guarded by a breaker with a local fallback."""
    if not spec.shared:
        return MemoryStore()
    url = redis_url_of(spec, environ)
    assert url is not None  # the policy compiler requires one for a shared store
    shared = RedisStore(url, spec.namespace, spec.timeout_s)
    return GuardedStore(
        shared,
        MemoryStore(),
        fail_max=spec.failures_to_local,
        reset_timeout_s=spec.retry_shared_after_s,
    )


async def keep_reconciling(store: CounterStore, every_s: float) -> None:
    """Share what a guarded store counted locally, every ``every_s``, even with no traffic.

    A guarded store reconciles after any shared call that succeeds; with no request
    coming, nothing would call. Runs until cancelled; a no-op for other stores.
    """
    if not isinstance(store, GuardedStore):
        return
    while True:
        await asyncio.sleep(every_s)
        snapshot = store.snapshot()
        if not snapshot["pending_settles"] and not snapshot["pending_keys"]:
            continue
        try:
            await store.reconcile()
        except Exception:
            log.exception("reconciling the shared counter store failed; retrying later")
