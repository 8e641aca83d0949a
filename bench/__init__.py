"""``make bench``: what the sidecar costs in the request path, measured with wrk.

Run ``python -m bench.run --help`` for the options; see :mod:`bench.run`.
"""
