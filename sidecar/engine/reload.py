"""Hot reload of the policy file: validated in full, swapped at once, a bad one refused.

The :class:`PolicyReloader` reads the file again when asked (SIGHUP, the admin API's
``POST /reload``) or when its content changes (:meth:`PolicyReloader.watch` polls it).
A new policy goes through the same checks as at start (schema, references, provider
credentials in the environment, and, when the sidecar knows Envoy's configuration
(``serve --envoy-config``), the clusters and failover aggregates it needs there);
then a successor runtime takes over for new requests (:meth:`RoutingRuntime.successor`:
live state carries over for what did not change),
while requests under way finish under the policy they started with. A file that fails
any check is refused with its problems in the log and a metric, and the running policy
goes on serving. The ``state`` section cannot change while running: the store is built
at start, so a policy that changes it is refused with a message saying to restart.
"""

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.router import ActivePolicy
from sidecar.engine.runtime import RoutingRuntime
from sidecar.policy.envoy_check import check_envoy_config
from sidecar.policy.loader import load_policy, resolve_credentials
from sidecar.policy.problems import PolicyError

log = logging.getLogger("sidecar.reload")


class RuntimeHolder:
    """The runtime new requests get; replaced whole on reload."""

    def __init__(self, runtime: RoutingRuntime) -> None:
        self.current = runtime


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload came to: ``applied``, ``refused`` or ``unchanged``, and why."""

    result: str
    digest: str
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"result": self.result, "digest": self.digest, "problems": list(self.problems)}


class PolicyReloader:
    """Reloads one policy file into a :class:`RuntimeHolder`."""

    def __init__(
        self,
        path: Path,
        environ: Mapping[str, str],
        holder: RuntimeHolder,
        envoy_config: Path | None = None,
    ) -> None:
        self._path = path
        self._environ = environ
        self._holder = holder
        self._envoy_config = envoy_config
        self.last: dict[str, object] | None = None
        """The last reload's result, trigger, problems and time, for the state view."""
        self._seen = _fingerprint(path)
        self.listeners: list[Callable[[ReloadResult], None]] = []

    def reload(self, trigger: str) -> ReloadResult:
        """Read the file and swap in its policy if it is valid and new."""
        running = self._holder.current.active.policy
        try:
            policy = load_policy(self._path)
            credentials = resolve_credentials(policy, self._environ, str(self._path))
        except (PolicyError, OSError) as error:
            problems = _problems(error)
            return self._done(ReloadResult("refused", running.digest, problems), trigger)
        if policy.digest == running.digest:
            return self._done(ReloadResult("unchanged", policy.digest), trigger)
        if self._envoy_config is not None:
            envoy_problems = check_envoy_config(policy, self._envoy_config)
            if envoy_problems:
                rendered = tuple(p.render(str(self._path)) for p in envoy_problems)
                return self._done(ReloadResult("refused", running.digest, rendered), trigger)
        if policy.store != running.store:
            problem = f"{self._path}: the 'state' section changed: restart the sidecar to apply it"
            return self._done(ReloadResult("refused", running.digest, (problem,)), trigger)
        current = self._holder.current
        self._holder.current = current.successor(ActivePolicy(policy, credentials))
        return self._done(ReloadResult("applied", policy.digest), trigger)

    async def watch(self, every_s: float) -> None:
        """Reload whenever the file's content changes; runs until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            seen = _fingerprint(self._path)
            if seen != self._seen:
                self._seen = seen
                self.reload("file changed")

    def _done(self, result: ReloadResult, trigger: str) -> ReloadResult:
        fields = {"trigger": trigger, "digest": result.digest, "problems": list(result.problems)}
        self.last = {"result": result.result, "at": time.time(), **fields}
        if result.result == "refused":
            log.error("policy reload refused; the running policy goes on", extra=fields)
        elif result.result == "applied":
            log.warning("policy reloaded", extra=fields)
        else:
            log.info("policy reload: no change", extra=fields)
        for listener in self.listeners:
            listener(result)
        return result


def _fingerprint(path: Path) -> str:
    """What changes when the file does: its content's digest ('' when unreadable)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as error:
        return f"unreadable: {os.strerror(error.errno or 0)}"


def _problems(error: PolicyError | OSError) -> tuple[str, ...]:
    if isinstance(error, PolicyError):
        return tuple(problem.render(error.source_name) for problem in error.problems)
    return (f"{error.filename}: {error.strerror}",)
