"""The command line as operators use it: check, hash-key, health and serve's refusals."""

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.__main__ import main
from sidecar.core.clock import FakeClock
from sidecar.core.identity import key_digest
from sidecar.core.router import ActivePolicy
from sidecar.engine.runtime import RoutingRuntime
from sidecar.extproc.grpc_server import GrpcServer
from sidecar.extproc.server import ExternalProcessorService, StreamRegistry
from tests.conftest import DEMO_POLICY, ENVOY_CONFIG


def test_check_accepts_the_demo_policy_with_its_envoy_config(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", str(DEMO_POLICY), "--envoy-config", str(ENVOY_CONFIG)]) == 0
    assert "ok (policy" in capsys.readouterr().out


def test_check_refuses_a_bad_policy_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(DEMO_POLICY.read_text().replace("tier: free", "tier: gold"))
    assert main(["check", str(bad)]) == 2
    error = capsys.readouterr().err
    assert f"{bad}:" in error
    assert "tenants.demo-free.tier: unknown tier 'gold'" in error


def test_check_refuses_a_cluster_the_envoy_config_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    envoy = tmp_path / "envoy.yaml"
    envoy.write_text(ENVOY_CONFIG.read_text().replace("- name: openai-premium", "- name: other"))
    assert main(["check", str(DEMO_POLICY), "--envoy-config", str(envoy)]) == 2
    assert "no cluster named 'openai-premium'" in capsys.readouterr().err


def test_hash_key_reads_the_key_from_stdin_so_it_stays_out_of_shell_history() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "hash-key"],
        input="sk-demo-free\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == f"sha256:{key_digest('sk-demo-free')}"
    assert "sha256:e47e4ba5" in DEMO_POLICY.read_text(), "the demo policy holds this digest"


def test_serve_refuses_to_start_without_a_credential_the_policy_names() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--policy", str(DEMO_POLICY), "--admin", "off"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=30,
    )
    assert done.returncode == 2
    assert "environment variable DEMO_OPENAI_API_KEY is not set" in done.stderr


@pytest.fixture
async def serving_address(demo_active: ActivePolicy) -> AsyncIterator[str]:
    address = f"unix-abstract:ai-sidecar-cli-{uuid.uuid4().hex}"
    runtime = RoutingRuntime(demo_active, FakeClock())
    service = ExternalProcessorService(lambda: runtime, StreamRegistry())
    server = GrpcServer(service, address, 1 << 20)
    await server.start()
    yield address
    await server.stop(0)


async def test_health_reports_serving_from_the_grpc_health_service(serving_address: str) -> None:
    process = await _run_cli("health", "--address", serving_address)
    assert process == (0, "serving")


async def test_health_fails_when_nothing_listens() -> None:
    address = f"unix-abstract:ai-sidecar-nobody-{uuid.uuid4().hex}"
    code, _ = await _run_cli("health", "--address", address, "--timeout", "0.5")
    assert code == 1


async def _run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode().strip()
