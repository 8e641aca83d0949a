"""Loading the operator's policy: YAML reading, schema checks, compilation.

The entry points are :func:`sidecar.policy.loader.load_policy` (a file) and
:func:`sidecar.policy.loader.parse_policy` (text), plus
:func:`sidecar.policy.envoy_check.check_envoy_config` for ``python -m sidecar check``.
Every problem found is reported with the file, the line, the field path and what is
wrong; a file with problems never produces a policy.
"""
