"""The async driver around the pure core: clock, waiting for pool slots, live state.

The core decides; this package owns the mutable, time-bound parts (the fleet of
breakers and pools, answer caches, degraded queues) and the waiting that the core
only books. It imports asyncio but no Envoy or gRPC types.
"""
