"""The processes of a benchmark run: fake upstreams, the sidecar and the front Envoy.

The sidecar and the front Envoy are started exactly as ``make run`` and the end-to-end
tests start them (:class:`sidecar_demo.stack.DemoStack`'s own command lines, with the
project's ``envoy/envoy.yaml`` and ``examples/policy.yaml``), except that the demo's
Python model servers are replaced by a second Envoy answering on the same ports
(``bench/upstream-envoy.yaml``). Every child is tied to this process with
``setpriv --pdeathsig TERM``, so none outlives the benchmark.
"""

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

import yaml

from sidecar_demo.specs import DEMO_FLEET
from sidecar_demo.stack import (
    ENVOY_LISTENER,
    SIDECAR_ADMIN,
    DemoStack,
    ManagedProcess,
    StackLayout,
    busy_endpoints,
)

UPSTREAM_CONFIG: Final = Path(__file__).with_name("upstream-envoy.yaml")
UPSTREAM_PORTS: Final = tuple(spec.port for spec in DEMO_FLEET)
"""Where ``envoy/envoy.yaml`` sends its clusters (18000-18006)."""

FRONT_URL: Final = f"http://{ENVOY_LISTENER[0]}:{ENVOY_LISTENER[1]}"
WORKERS_LISTEN: Final = ("127.0.0.1", 19100)
"""Where sidecar workers listen together (``serve --workers``): a TCP port they share."""
WORKER_STREAMS_PER_CONNECTION: Final = 4
"""Envoy opens another HTTP/2 connection to the workers past this many streams on one,
so that the kernel (SO_REUSEPORT) spreads connections, hence streams, over the workers."""


class BenchError(RuntimeError):
    """The benchmark cannot run or went wrong; the message says what to do."""


@dataclass(frozen=True)
class Pids:
    """The process ids whose CPU time the benchmark reads."""

    envoy: int
    sidecar: int
    upstream: int


class BenchStack:
    """Upstream Envoy, sidecar and front Envoy, started in that order, stopped in reverse.

    Use it as a context manager: everything started is stopped on the way out, also
    after an error or Ctrl-C.
    """

    def __init__(self, repo: Path, log_dir: Path, env: Mapping[str, str], workers: int = 1) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers
        demo = DemoStack(
            StackLayout(
                policy=repo / "examples" / "policy.yaml",
                envoy_config=repo / "envoy" / "envoy.yaml",
                log_dir=log_dir,
                extra_env=dict(env),
            )
        )
        self.sidecar = demo.sidecar
        self.envoy = demo.envoy
        if workers > 1:
            self._use_workers(repo, log_dir, workers)
        self.upstream = ManagedProcess(
            "upstream envoy",
            [
                str(Path(sys.executable).parent / "envoy"),
                "-c",
                str(UPSTREAM_CONFIG),
                "--disable-hot-restart",
                "--log-level",
                "warning",
                "--concurrency",
                "1",
            ],
            f"http://127.0.0.1:{UPSTREAM_PORTS[-1]}/ready",
            log_dir / "upstream-envoy.log",
            demo.envoy.env,
        )
        self._parts = (self.upstream, self.sidecar, self.envoy)

    def __enter__(self) -> "BenchStack":
        busy = busy_endpoints()
        if busy:
            raise BenchError(
                f"in use: {', '.join(busy)}. The benchmark needs the ports of `make run` and "
                "the end-to-end tests: stop a running demo (make run) or test run first."
            )
        try:
            for part in self._parts:
                part.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for part in reversed(self._parts):
            part.stop()

    def _use_workers(self, repo: Path, log_dir: Path, workers: int) -> None:
        """The sidecar as ``workers`` processes on one TCP port, and Envoy pointed at it."""
        host, port = WORKERS_LISTEN
        argv = list(self.sidecar.argv)
        argv[argv.index("--listen") + 1] = f"{host}:{port}"
        self.sidecar.argv = [*argv, "--workers", str(workers)]
        config = render_tcp_sidecar_config(
            repo / "envoy" / "envoy.yaml", log_dir / "envoy-workers.yaml", host, port
        )
        envoy_argv = list(self.envoy.argv)
        envoy_argv[envoy_argv.index("-c") + 1] = str(config)
        self.envoy.argv = envoy_argv

    def metrics_urls(self) -> list[str]:
        """The Prometheus scrape of every worker (one admin port each)."""
        host, port = SIDECAR_ADMIN
        return [f"http://{host}:{port + index}/metrics" for index in range(self.workers)]

    def pids(self) -> Pids:
        envoy, sidecar, upstream = self.envoy.pid, self.sidecar.pid, self.upstream.pid
        if envoy is None or sidecar is None or upstream is None:
            raise BenchError("the stack is not running")
        return Pids(envoy=envoy, sidecar=sidecar, upstream=upstream)

    def check_alive(self) -> None:
        """Raise :class:`BenchError` if a part has exited since it started."""
        dead = [
            f"{part.name} (exit code {part.process.returncode}, log {part.log_path})"
            for part in self._parts
            if part.process is not None and part.process.poll() is not None
        ]
        if dead:
            raise BenchError(f"exited during the benchmark: {', '.join(dead)}")


def render_tcp_sidecar_config(template: Path, target: Path, host: str, port: int) -> Path:
    """``template`` with the ``ai_sidecar`` cluster on TCP ``host:port`` instead of its pipe.

    Written without the template's comments (a parsed and dumped copy). The cluster also
    caps streams per HTTP/2 connection, so Envoy opens several connections under load.
    """
    tree = yaml.safe_load(template.read_text())
    clusters = tree["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == "ai_sidecar"]
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    endpoint["endpoint"]["address"] = {"socket_address": {"address": host, "port_value": port}}
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    options["explicit_http_config"]["http2_protocol_options"] = {
        "max_concurrent_streams": WORKER_STREAMS_PER_CONNECTION
    }
    target.write_text(yaml.safe_dump(tree, sort_keys=False))
    return target
