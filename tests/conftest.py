"""Fixtures shared by every test layer: the demo policy and its credentials."""

from pathlib import Path

import pytest

from sidecar.core.router import ActivePolicy
from sidecar.domain.policy import Policy
from sidecar.policy.loader import load_policy, resolve_credentials

ROOT = Path(__file__).resolve().parent.parent
DEMO_POLICY = ROOT / "examples" / "policy.yaml"
ENVOY_CONFIG = ROOT / "envoy" / "envoy.yaml"
DEMO_CREDENTIALS = {
    "DEMO_OPENAI_API_KEY": "sk-upstream-openai-demo",
    "DEMO_ENTERPRISE_API_KEY": "sk-upstream-enterprise-demo",
}


@pytest.fixture(scope="session")
def demo_policy() -> Policy:
    return load_policy(DEMO_POLICY)


@pytest.fixture(scope="session")
def demo_active(demo_policy: Policy) -> ActivePolicy:
    credentials = resolve_credentials(demo_policy, DEMO_CREDENTIALS, str(DEMO_POLICY))
    return ActivePolicy(demo_policy, credentials)
