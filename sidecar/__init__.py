"""AI routing sidecar: an Envoy external-processing service that routes AI requests.

The package is layered: ``domain`` (value types) and ``core`` (routing decisions) are
pure Python with no I/O; ``policy`` loads and compiles the operator's YAML; ``extproc``
adapts Envoy's ext_proc gRPC protocol to the core; ``admin`` serves health and state;
``__main__`` is the only place where these are wired together.
"""

__version__ = "0.1.0"
