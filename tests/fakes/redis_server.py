"""A real ``redis-server`` for tests, on a free port, in a temporary directory.

:class:`RedisServer` runs Debian's ``redis-server`` binary with no persistence, waits
until it answers ``PING``, and can misbehave for outage tests:

- :meth:`RedisServer.pause` / :meth:`RedisServer.resume` freeze and thaw the process
  (SIGSTOP/SIGCONT): connections still open, nothing answers, so clients time out;
- :meth:`RedisServer.kill` ends it (SIGKILL): connections are refused, data is lost;
- :meth:`RedisServer.restart` starts it again, empty, on the same port.

If the binary is missing, :meth:`RedisServer.start` raises :class:`RedisServerMissing`,
whose message says how to get it (``make test`` installs it), so suites fail clearly
instead of skipping.
"""

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

INSTALL_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "install-debian-package.sh"


class RedisServerMissing(RuntimeError):  # noqa: N818 - reads as the condition it reports
    """``redis-server`` is not on PATH."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ping(port: int, timeout_s: float = 0.2) -> bool:
    """Whether a Redis on ``port`` answers ``PING`` within ``timeout_s``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process, started and stopped by the test."""

    def __init__(self, binary: str = "redis-server", startup_timeout_s: float = 10.0) -> None:
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start on a free port (the same port again after :meth:`kill`)."""
        executable = shutil.which(self.binary)
        if executable is None:
            raise RedisServerMissing(
                f"{self.binary} is not installed (Debian package redis-server): "
                f"`make test` installs it, or run "
                f"`sh {INSTALL_SCRIPT} redis-server redis-server tests` as root"
            )
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        if not self.port:
            self.port = free_port()
        self._process = subprocess.Popen(
            self._command(executable),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_until_up()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory."""
        if self._process is not None:
            self.resume()
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
            self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def pause(self) -> None:
        """Freeze the process: connections hang instead of failing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused process."""
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """End the process at once; its port refuses connections until :meth:`restart`."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)

    def restart(self) -> None:
        """Kill the server if it runs, then start a fresh, empty one on the same port."""
        self.kill()
        self.start()

    def _command(self, executable: str) -> list[str]:
        assert self._dir is not None
        return [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip

    def _signal(self, signum: signal.Signals) -> None:
        if self.running:
            assert self._process is not None
            self._process.send_signal(signum)

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server on port {self.port} exited: {self._log_tail()}")
            if ping(self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in time")

    def _log_tail(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / "redis.log").read_text()[-2000:]
        return ""

    def __enter__(self) -> Self:
        try:
            self.start()
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
