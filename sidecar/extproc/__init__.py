"""The Envoy adapter: ext_proc gRPC messages in, routing decisions out.

``codec`` converts between Envoy's protobuf types and the domain; ``processor``
handles the phases of one HTTP request; ``server`` runs the gRPC stream loop. Only
this package imports Envoy's API types.
"""
