"""The status page on the admin port, in a real headless browser (Debian's chromium).

The page is loaded as a person would see it, after its script has read ``/state``; the
rendered page must show the live state, and a screenshot is kept as a test artifact
(``test-artifacts/status-page.png``).
"""

import asyncio
import shutil
from pathlib import Path

import pytest

from sidecar_demo.stack import DEMO_CREDENTIALS
from tests.conftest import ROOT
from tests.e2e.conftest import SIDECAR_ADMIN_URL, Harness

pytestmark = pytest.mark.e2e

TOKEN = {"authorization": f"Bearer {DEMO_CREDENTIALS['AI_SIDECAR_ADMIN_TOKEN']}"}
ARTIFACT = ROOT / "test-artifacts" / "status-page.png"


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(
            "chromium is not installed (Debian package chromium): `make test` installs it, or "
            "run `sh tools/install-debian-package.sh chromium chromium tests` as root"
        )
    return binary


async def headless(*args: str) -> str:
    """Run chromium headless on the status page; its standard output."""
    process = await asyncio.create_subprocess_exec(
        chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1600",
        "--virtual-time-budget=4000",
        *args,
        f"{SIDECAR_ADMIN_URL}/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    return out.decode()


async def test_the_status_page_shows_live_state_in_a_browser(fresh: Harness) -> None:
    flag = {"on": True, "actor": "oncall", "reason": "status page drill"}
    async with fresh.http.post(
        f"{SIDECAR_ADMIN_URL}/flags/kill-openai-premium", json=flag, headers=TOKEN
    ) as response:
        assert response.status == 200
    assert (await fresh.chat("sk-demo-paid")).status == 200

    dom = await headless("--dump-dom")
    for shown in (
        "openai-premium",  # a cluster row
        "closed",  # a breaker state
        "kill-openai-premium",
        "oncall: status page drill",  # who switched the flag, and why
        "paid/chat",  # the canary route
        "degraded-mode",  # the SLO's flag
        "payments-monthly",  # a budget
    ):
        assert shown in dom, f"the rendered page lacks {shown!r}"
    assert '<div id="error"></div>' in dom, "the page read /state without an error"

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.unlink(missing_ok=True)
    await headless(f"--screenshot={ARTIFACT}")
    assert ARTIFACT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_page_is_served_with_a_strict_content_policy(harness: Harness) -> None:
    async with harness.http.get(f"{SIDECAR_ADMIN_URL}/") as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in response.headers["content-security-policy"]
        page = await response.text()
    assert "textContent" in page
    assert "innerHTML" not in page, "data never becomes markup"


def test_artifact_dir_is_ignored_by_git() -> None:
    ignored = (ROOT / ".gitignore").read_text()
    assert "test-artifacts" in ignored
    assert Path(ARTIFACT).is_relative_to(ROOT)
