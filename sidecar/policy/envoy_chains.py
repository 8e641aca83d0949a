"""The Envoy aggregate clusters a policy's failover chains need, as YAML to paste.

``python -m sidecar envoy-chains --policy FILE`` prints them. Each aggregate lists a
chain suffix in order and carries what makes failover work (see envoy/README.md,
"Failover"): the upstream ext_proc filter that rewrites every attempt for its hop, the
upstream codec, and the retry budget (which Envoy applies only on the aggregate).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.core.chains import aggregate_name
from sidecar.domain.ids import ClusterName

BEGIN_MARKER = "# BEGIN GENERATED FAILOVER CHAINS"
END_MARKER = "# END GENERATED FAILOVER CHAINS"


@dataclass(frozen=True, slots=True)
class ChainOptions:
    """Settings shared by every generated aggregate."""

    sidecar_cluster: str = "ai_sidecar"
    budget_percent: float = 20.0
    min_retry_concurrency: int = 10


_CODEC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"

_HEAD = """\
  - name: {name}
    connect_timeout: 2s
    lb_policy: CLUSTER_PROVIDED
    cluster_type:
      name: envoy.clusters.aggregate
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig
        clusters: [{hops}]
"""
"""The start of every aggregate: its name and its clusters in order."""

_FIRST = (
    _HEAD
    + """\
    # Retries (one per further hop) may add at most {budget:g}% to the requests in flight on this
    # chain, or {min_retries} at a time, whichever is more: a failing provider is not hammered.
    circuit_breakers: &ai_sidecar_retry_budget
      thresholds:
      - priority: DEFAULT
        retry_budget:
          budget_percent: {{value: {budget:.1f}}}
          min_retry_concurrency: {min_retries}
    typed_extension_protocol_options: &ai_sidecar_failover_filters
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        # Required by the proto; each hop cluster's own protocol options and TLS apply.
        explicit_http_config: {{http_protocol_options: {{}}}}
        http_filters:
        # Runs once per attempt: rewrites `model`, `authorization` and `content-length` for
        # the hop Envoy picked (endpoint metadata ai.sidecar/hop), and feeds its breaker.
        # Fail closed: an attempt the sidecar did not rewrite would carry the wrong model.
        - name: envoy.filters.http.ext_proc
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
            grpc_service:
              envoy_grpc:
                cluster_name: {sidecar}
                max_receive_message_length: 8388608
              initial_metadata:
              - {{key: x-ext-proc-role, value: upstream}}
            failure_mode_allow: false
            message_timeout: 1s
            stat_prefix: ai_sidecar_upstream
            # :path changes when a hop speaks another API (Ollama's API to an OpenAI hop).
            mutation_rules: {{allow_all_routing: true}}
            request_attributes: [xds.upstream_host_metadata]
            metadata_options:
              forwarding_namespaces:
                untyped: [ai.sidecar]
            processing_mode:
              request_header_mode: SEND   # SKIP would silently drop the rewrite
              request_body_mode: BUFFERED
              request_trailer_mode: SKIP
              response_header_mode: SEND  # every attempt's status feeds its hop's breaker
              response_body_mode: NONE
              response_trailer_mode: SKIP
        - name: envoy.filters.http.upstream_codec
          typed_config:
            "@type": {codec_type}
"""
)

_REST = (
    _HEAD
    + """\
    circuit_breakers: *ai_sidecar_retry_budget
    typed_extension_protocol_options: *ai_sidecar_failover_filters
"""
)


def render_aggregates(
    chains: Sequence[Sequence[ClusterName]],
    policy_file: str,
    options: ChainOptions = ChainOptions(),
) -> str:
    """The aggregate clusters for ``chains``, as items of Envoy's ``clusters`` list.

    The first defines YAML anchors for the shared settings, the others refer to them,
    so paste the block as a whole. Deterministic: the same chains give the same text.
    """
    lines = [
        f"{BEGIN_MARKER} (do not edit by hand).",
        "  # Regenerate after changing the policy's chains, and paste over this block:",
        f"  #   python -m sidecar envoy-chains --policy {policy_file}",
        "  # One aggregate cluster per chain suffix of two or more clusters (see envoy/README.md,",
        "  # 'Failover'). Every cluster listed needs endpoint metadata ai.sidecar/hop = its name.",
    ]
    text = "\n".join("  " + line if line.startswith("#") else line for line in lines) + "\n"
    for index, chain in enumerate(chains):
        template = _FIRST if index == 0 else _REST
        text += template.format(
            name=aggregate_name(chain),
            hops=", ".join(chain),
            budget=options.budget_percent,
            min_retries=options.min_retry_concurrency,
            sidecar=options.sidecar_cluster,
            codec_type=_CODEC_TYPE,
        )
    return text + f"  {END_MARKER}\n"
