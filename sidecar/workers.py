"""Several sidecar processes on one TCP address: ``serve --workers N``.

One Python process runs its event loop on one core. ``--workers N`` starts N worker
processes, each a whole sidecar (``serve`` with ``--worker-index i``), all listening
on the same ``host:port`` with ``SO_REUSEPORT``: the kernel spreads Envoy's
connections over them. This process only supervises: it forwards SIGTERM and SIGINT
to the workers (and SIGHUP, so that each reloads its policy), waits for them, and if
one of them ends on its own, stops the others and exits with an error, so that
whatever runs the sidecar restarts it whole.

Each worker is a sidecar of its own, like a replica: its breakers learn from the calls
it makes, its pools hold its own slots (a pool of 16 admits up to 16 per worker), and
its admin port is the given one plus its index. Budgets and rate limits are shared
only through a shared store (``state.store: redis``); with the memory store each
worker counts alone, which the workers log at start.

Envoy keeps few HTTP/2 connections to the sidecar (one per Envoy worker thread), and
``SO_REUSEPORT`` balances connections, not streams; ``envoy/envoy.yaml`` shows the
cluster settings that open more connections (``max_concurrent_streams``) so they
spread over the workers.
"""

import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("sidecar.workers")

_PR_SET_PDEATHSIG = 1
_STOP_TIMEOUT_S = 30.0


class WorkersError(ValueError):
    """``--workers`` was given with settings it cannot work with."""


def check_address(listen: str, workers: int) -> None:
    """Workers share a TCP ``host:port``: Unix sockets cannot be shared by processes."""
    if workers < 1:
        raise WorkersError(f"--workers must be at least 1, not {workers}")
    if workers > 1 and listen.startswith(("unix:", "unix-abstract:")):
        raise WorkersError(
            f"--workers {workers} needs a TCP --listen address (host:port) that the workers "
            f"share with SO_REUSEPORT; {listen} is a Unix socket, which only one process "
            "can listen on"
        )


def worker_admin(admin: str | None, index: int) -> str | None:
    """Worker ``index``'s admin address: the given port plus its index."""
    if admin is None:
        return None
    host, _, port = admin.rpartition(":")
    return f"{host}:{int(port) + index}"


def worker_argv(argv: Sequence[str], index: int) -> list[str]:
    """The command line of worker ``index``: the supervisor's, with the index added."""
    return [sys.executable, "-m", "sidecar", *argv, "--worker-index", str(index)]


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM if the supervisor dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(argv: Sequence[str], workers: int) -> int:
    """Run ``workers`` worker processes until a stop signal; their exit status."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children: list[subprocess.Popen[bytes]] = []

    def reload_all(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload_all)
    children += [
        # preexec_fn is safe here: the supervisor has started no threads.
        subprocess.Popen(worker_argv(argv, index), preexec_fn=_die_with_parent)
        for index in range(workers)
    ]
    log.info("workers started", extra={"workers": workers, "pids": [c.pid for c in children]})
    failed = _wait(children, lambda: stopping)
    _stop_all(children)
    return 1 if failed else 0


def _wait(children: list[subprocess.Popen[bytes]], stopping: Callable[[], bool]) -> bool:
    """Wait for a stop signal (False) or for a worker to end on its own (True)."""
    while not stopping():
        for child in children:
            if child.poll() is not None:
                log.error(
                    "a worker ended; stopping the others",
                    extra={"pid": child.pid, "exit_code": child.returncode},
                )
                return True
        time.sleep(0.2)
    return False


def _stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
