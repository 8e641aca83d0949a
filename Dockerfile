# The routing sidecar as a container image: slim Python, non-root, policy mounted.
#
#   docker build -t ai-routing-sidecar .
#   docker run -v "$PWD/examples:/etc/ai-sidecar:ro" -e DEMO_OPENAI_API_KEY=... \
#     -e DEMO_ENTERPRISE_API_KEY=... ai-routing-sidecar
#
# In a pod the sidecar shares the network namespace with Envoy, so Envoy reaches it on
# the abstract Unix socket "@ai-sidecar" as in envoy/envoy.yaml. Pass
# `--listen 0.0.0.0:50051` (and point Envoy's ai_sidecar cluster there) to use TCP.

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.85,<2"
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY sidecar ./sidecar
# The project's own wire contracts are compiled here, never committed.
RUN mkdir -p sidecar/_proto \
    && python -m grpc_tools.protoc -Iproto --python_out=sidecar/_proto --pyi_out=sidecar/_proto \
       $(find proto -name '*.proto') \
    && find sidecar/_proto -type d -exec touch {}/__init__.py \; \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin sidecar
COPY --from=build /wheels /wheels
# xds-protos ships an old copy of opentelemetry/proto: reinstall the real one over it.
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && pip install --no-cache-dir --force-reinstall --no-deps \
       "opentelemetry-proto==$(python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')" \
    && python -c 'from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope'
USER 10001
# The operator's policy: mount a directory holding policy.yaml here.
VOLUME ["/etc/ai-sidecar"]
EXPOSE 9902
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "sidecar", "health"]
ENTRYPOINT ["python", "-m", "sidecar", "serve"]
CMD ["--policy", "/etc/ai-sidecar/policy.yaml", "--admin", "0.0.0.0:9902"]
