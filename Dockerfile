# syntax=docker/dockerfile:1
# The fraudmodel-operator image: the operator and its runtime dependencies only
# (kopf, pydantic, pyyaml, prometheus-client, httpx, kubernetes, promql-parser) — no torch, no BentoML.
#   docker build -t fraudmodel-operator:dev .
#   kind load docker-image fraudmodel-operator:dev --name fraudmodel
# Without a registry: scripts/images/build operator (BASE_IMAGE = Python 3.11 from Debian packages).
ARG PYTHON_VERSION=3.11
# Any image with python3 (3.11), its venv module, groupadd and useradd.
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/operator
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN /opt/operator/bin/pip install . \
 && /opt/operator/bin/pip uninstall --yes pip setuptools \
 && /opt/operator/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="fraudmodel-operator" \
      org.opencontainers.image.description="Kopf operator serving FraudModels with BentoML and analysed canary rollouts" \
      org.opencontainers.image.licenses="Apache-2.0"
# Non-root (the chart's securityContext expects uid/gid 65532) and read-only-root friendly:
# no bytecode writes at runtime, and /tmp is the only writable path (an emptyDir in the chart).
# The user is "fraudmodel": Debian (and so python:3.11-slim) already has an "operator" group.
RUN groupadd --system --gid 65532 fraudmodel \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin fraudmodel
COPY --from=build /opt/operator /opt/operator
ENV PATH=/opt/operator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    METRICS_PORT=8080 \
    LIVENESS_PORT=8081
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["fraudmodel-operator"]
CMD ["run"]
