"""Candidate filters, one per file; ``DEFAULT_FILTERS`` is the order they run in."""

from sidecar.core.pipeline import CandidateFilter
from sidecar.core.pipeline.filters.breaker_open import BreakerOpen
from sidecar.core.pipeline.filters.cluster_full import ClusterFull
from sidecar.core.pipeline.filters.endpoint_not_served import EndpointNotServed
from sidecar.core.pipeline.filters.killed_by_flag import KilledByFlag

DEFAULT_FILTERS: tuple[CandidateFilter, ...] = (
    EndpointNotServed(),
    KilledByFlag(),
    BreakerOpen(),
    ClusterFull(),
)
