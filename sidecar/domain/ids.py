"""Distinct string types for the names the policy and requests use.

``NewType`` keeps tenants, tiers, virtual models and clusters apart for the type
checker, so a tenant id can never be passed where a cluster name is expected.
"""

from typing import NewType

TenantId = NewType("TenantId", str)
"""A tenant, as named in the policy."""

TierName = NewType("TierName", str)
"""A service tier (for example free, paid, enterprise)."""

ModelName = NewType("ModelName", str)
"""A virtual model: the model name an application asks for."""

ClusterName = NewType("ClusterName", str)
"""An upstream model cluster, named as in the Envoy configuration."""
