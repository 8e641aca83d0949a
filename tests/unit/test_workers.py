"""``serve --workers``: several sidecar processes on one TCP port, one supervisor.

Real processes: the supervisor starts its workers, each answers on its own admin port
and on the shared gRPC port; a stop signal stops them all; a worker that dies takes the
others down and the supervisor reports it. A lone sidecar never shares its port.
"""

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.workers import WorkersError, check_address, worker_admin, worker_argv
from tests.conftest import DEMO_CREDENTIALS, DEMO_POLICY
from tests.fakes.redis_server import free_port

START_TIMEOUT_S = 20.0


def test_workers_need_a_tcp_address() -> None:
    check_address("127.0.0.1:50051", 4)
    check_address("unix-abstract:ai-sidecar", 1)
    with pytest.raises(WorkersError, match="needs a TCP --listen address"):
        check_address("unix-abstract:ai-sidecar", 2)
    with pytest.raises(WorkersError, match="at least 1"):
        check_address("127.0.0.1:50051", 0)


def test_each_worker_gets_the_next_admin_port_and_its_index() -> None:
    assert worker_admin("127.0.0.1:9902", 0) == "127.0.0.1:9902"
    assert worker_admin("127.0.0.1:9902", 3) == "127.0.0.1:9905"
    assert worker_admin(None, 3) is None
    assert worker_argv(["serve", "--workers", "2"], 1)[-4:] == [
        "--workers",
        "2",
        "--worker-index",
        "1",
    ]


class Sidecar:
    """``python -m sidecar serve`` with the demo policy, its log in a file."""

    def __init__(self, log: Path, *extra: str) -> None:
        self.log = log
        command = [sys.executable, "-m", "sidecar", "serve", "--policy", str(DEMO_POLICY)]
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [*command, *extra],
                env={**os.environ, **DEMO_CREDENTIALS},
                stdout=subprocess.DEVNULL,
                stderr=output,
            )

    def children(self) -> list[int]:
        pid = self.process.pid
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def poll_until(condition: Callable[[], bool], log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            pytest.fail(f"the sidecar did not get ready in time; its log ends:\n{tail}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def admin_ports(grpc_port: int) -> int:
    """A free port whose next one is free too (two workers' admin ports), neither gRPC's.

    Drawn below Linux's ephemeral range (32768 and up): there, outgoing connections
    take the even ports, so on a busy machine their TIME_WAIT leftovers can hold the
    neighbour of every port the kernel hands out.
    """
    draw = random.Random()
    for _ in range(200):
        port = draw.randrange(20000, 32000)
        if grpc_port not in (port, port + 1) and port_free(port) and port_free(port + 1):
            return port
    pytest.fail("no two free consecutive ports")


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_workers(tmp_path: Path) -> tuple[Sidecar, int]:
    grpc_port = free_port()
    admin_port = admin_ports(grpc_port)
    sidecar = Sidecar(
        tmp_path / "sidecar.log",
        "--listen", f"127.0.0.1:{grpc_port}",
        "--admin", f"127.0.0.1:{admin_port}",
        "--workers", "2",
    )  # fmt: skip
    try:
        poll_until(lambda: ready(admin_port) and ready(admin_port + 1), sidecar.log)
    except BaseException:
        sidecar.stop()
        raise
    return sidecar, admin_port


def test_two_workers_serve_and_stop_together(tmp_path: Path) -> None:
    sidecar, _ = start_workers(tmp_path)
    try:
        workers = sidecar.children()
        assert len(workers) == 2
        sidecar.process.send_signal(signal.SIGTERM)
        assert sidecar.process.wait(START_TIMEOUT_S) == 0
        assert not any(alive(pid) for pid in workers)
    finally:
        sidecar.stop()


def test_a_dead_worker_stops_the_others_and_fails_the_supervisor(tmp_path: Path) -> None:
    sidecar, _ = start_workers(tmp_path)
    try:
        first, second = sidecar.children()
        os.kill(first, signal.SIGKILL)
        assert sidecar.process.wait(START_TIMEOUT_S) == 1
        assert not alive(second)
        assert "a worker ended; stopping the others" in sidecar.log.read_text()
    finally:
        sidecar.stop()


def test_a_lone_sidecar_refuses_a_port_another_one_listens_on(tmp_path: Path) -> None:
    grpc_port, admin_port = free_port(), free_port()
    first = Sidecar(
        tmp_path / "first.log",
        "--listen", f"127.0.0.1:{grpc_port}",
        "--admin", f"127.0.0.1:{admin_port}",
    )  # fmt: skip
    try:
        poll_until(lambda: ready(admin_port))
        second = Sidecar(
            tmp_path / "second.log", "--listen", f"127.0.0.1:{grpc_port}", "--admin", "off"
        )
        assert second.process.wait(START_TIMEOUT_S) == 1
        assert f"cannot listen on 127.0.0.1:{grpc_port}" in second.log.read_text()
    finally:
        first.stop()


def test_sighup_reaches_every_worker_and_stops_none(tmp_path: Path) -> None:
    sidecar, admin_port = start_workers(tmp_path)
    try:
        sidecar.process.send_signal(signal.SIGHUP)
        poll_until(lambda: sidecar.log.read_text().count("policy reload: no change") == 2)
        assert sidecar.process.poll() is None
        assert ready(admin_port)
        assert ready(admin_port + 1)
    finally:
        sidecar.stop()
