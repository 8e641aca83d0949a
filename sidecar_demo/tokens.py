"""Demo JWTs: HS256 tokens signed with the demo key that ``envoy/envoy.yaml`` trusts.

For the demo and the tests only: a real deployment verifies tokens from its identity
provider (``remote_jwks``) and never holds a signing key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

DEMO_JWT_SECRET = b"demo-only-hs256-secret-not-for-production!!"
DEMO_JWT_ISSUER = "demo-issuer"
DEMO_JWT_KEY_ID = "demo"


def mint_token(claims: dict[str, Any], secret: bytes = DEMO_JWT_SECRET) -> str:
    """An HS256 JWT carrying ``claims``, signed with ``secret``."""
    header = {"alg": "HS256", "typ": "JWT", "kid": DEMO_JWT_KEY_ID}
    signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def demo_tenant_token(tenant: str, now_s: int, ttl_s: int = 3600) -> str:
    """A demo token naming ``tenant`` in its ``tenant`` claim, valid from ``now_s``."""
    claims = {
        "iss": DEMO_JWT_ISSUER,
        "sub": f"user-of-{tenant}",
        "tenant": tenant,
        "iat": now_s,
        "exp": now_s + ttl_s,
    }
    return mint_token(claims)


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
