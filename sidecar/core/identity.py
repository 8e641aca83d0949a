"""Who is calling: the tenant, taken only from trusted sources.

Two sources count: a claim of a JWT that Envoy's jwt_authn filter verified (it
reaches the sidecar as dynamic metadata, which clients cannot set), and an API key
whose SHA-256 digest the policy lists. Anything else a client sends is ignored.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.domain.ids import TenantId
from sidecar.domain.outcome import (
    Rejection,
    invalid_token,
    missing_credentials,
    unknown_api_key,
    unknown_token_tenant,
)
from sidecar.domain.policy import ApiKeySource, Policy, TenantSpec


@dataclass(frozen=True, slots=True)
class PresentedIdentity:
    """What a request carries that may identify its tenant.

    ``api_key_header`` is the raw value of the policy's API key header;
    ``verified_claims`` is the payload of a token Envoy verified, or None;
    ``token_failure`` is why Envoy did not accept a token, when it says so.
    """

    api_key_header: str | None
    verified_claims: Mapping[str, object] | None
    token_failure: str | None = None


def key_digest(api_key: str) -> str:
    """The hex SHA-256 digest under which the policy stores an API key."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def identify(presented: PresentedIdentity, policy: Policy) -> TenantSpec | Rejection:
    """Find the tenant of a request, or the 401 that says why there is none.

    A verified token wins over an API key: its claim was checked by Envoy against
    the identity provider, while the key is checked here.
    """
    if policy.jwt_source is not None and presented.verified_claims is not None:
        return _tenant_from_claims(presented.verified_claims, policy)
    api_key = _extract_key(presented.api_key_header, policy.api_key_source)
    if api_key is None:
        return missing_credentials()
    if presented.token_failure is not None and _looks_like_jwt(api_key):
        return invalid_token(presented.token_failure)
    tenant_id = policy.tenant_by_key_digest.get(key_digest(api_key))
    if tenant_id is None:
        return unknown_api_key()
    return policy.tenants[tenant_id]


def _tenant_from_claims(claims: Mapping[str, object], policy: Policy) -> TenantSpec | Rejection:
    assert policy.jwt_source is not None
    claim = policy.jwt_source.tenant_claim
    value = claims.get(claim)
    tenant = policy.tenants.get(TenantId(value)) if isinstance(value, str) else None
    if tenant is None:
        return unknown_token_tenant(claim)
    return tenant


def _looks_like_jwt(value: str) -> bool:
    """Three dot-separated parts, as a JWT has; API keys have none."""
    return value.count(".") == 2


def _extract_key(header_value: str | None, source: ApiKeySource) -> str | None:
    if header_value is None:
        return None
    value = header_value.strip()
    if source.scheme is not None:
        scheme, _, rest = value.partition(" ")
        if scheme.lower() != source.scheme.lower():
            return None
        value = rest.strip()
    return value or None
